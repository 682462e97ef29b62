"""Batch sampling of the MDLM / ReMDM family with per-sequence state and x_θ caching (docs/method.md §5).

Every random draw of sample i comes from a generator seeded by (seed, i) and consumed only by that
sample, so a sample does not depend on the batch it was drawn in or on the number of ranks.

A step draws from the categorical of `steps.remdm_step_probs` in two Gumbel-max stages: per position,
stay vs leave (two outcomes); then, only where a masked position leaves, the token over the nucleus of
x_θ. By the Gumbel-max grouping property this is the same categorical as one Gumbel-max over all V
outcomes, but costs O(L) per step instead of O(L·V): softmax, nucleus and noise are computed only for
the few rows that unmask.

Steps follow kuleshov-group/remdm (docs/method.md §5): T random steps over linspace(1, 1e-5, T + 1), then one
noise-removal pass whose argmax fills what is still masked; NFE counts every forward, that one included
(≤ T + 1: a sequence a step left unchanged reuses its x_θ, the model not being time-conditioned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsl_scale.core.device import CPU
from dsl_scale.core.seeding import derive_seed
from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.sampling.config import SamplerConfig
from dsl_scale.sampling.schedules import CURRENT_CONFIDENCE, SCHEDULES, Schedule
from dsl_scale.sampling.steps import gumbel_max, gumbel_noise, nucleus_rows, transition_groups
from dsl_scale.sampling.visible_channel import VisibleThroughChannel

SAMPLE_STREAM = 5
Denoiser = Callable[[torch.Tensor], torch.Tensor]  # ids [b, L] → logits [b, L, V]
Trace = Callable[[int, float, torch.Tensor], None]  # (step k, time s reached, ids [n, L])


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [n, L]
    nfe: list[int]
    psi: torch.Tensor  # [n, L] x_θ probability of each token when drawn; 0 where the final argmax set it
    # the realised remasks, per sequence: [step, position, the token remasked] for every visible token a step
    # sent back to [MASK] (empty for samplers that never remask); len() per step is the per-step trace
    remasks: list[list[list[int]]] | None = None


def sample_generators(seed: int, indices: list[int], device: torch.device = CPU) -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, index), on the device that holds the sampler's state (a
    CUDA generator draws other numbers than a CPU one: samples are a function of (seed, index) per device type)."""
    return [torch.Generator(device).manual_seed(derive_seed(seed, SAMPLE_STREAM, i)) for i in indices]


def state_device(denoise: Denoiser) -> torch.device:
    """Where a sampler keeps its state (ids, ψ, z) and generators: the denoiser's model's device (ModelDenoiser
    .device), so x_θ never leaves the accelerator; the CPU for a denoiser that names none."""
    return torch.device(getattr(denoise, "device", CPU))


def time_grid(steps: int, t_final: float = 1e-5) -> list[float]:
    return torch.linspace(1.0, t_final, steps + 1, dtype=torch.float64, device="cpu").tolist()


@torch.no_grad()
def sample(
    denoise: Denoiser,
    indices: list[int],
    seq_len: int,
    steps: int,
    mask_id: int,
    seed: int,
    sampler: SamplerConfig | None = None,
    top_p: float = 0.9,
    t_final: float = 1e-5,
    cache: bool = True,
    trace: Trace | None = None,
) -> SampleResult:
    """Samples `indices` with the MDLM/ReMDM sampler `sampler` (default MDLM). Returns tokens and NFE.

    With `cache`, a sequence that a step left unchanged reuses its x_θ instead of a new forward pass.
    """
    sampler = sampler or SamplerConfig()
    if getattr(sampler, "visible_snr", None) is not None:
        denoise = VisibleThroughChannel(denoise, sampler.visible_snr, mask_id)
    n = len(indices)
    device = state_device(denoise)
    x = torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    psi = torch.zeros(n, seq_len, dtype=torch.float64, device=device)  # x_θ prob of each token when it was unmasked
    return discrete_phase(denoise, x, psi, time_grid(steps, t_final), sample_generators(seed, indices, device),
                          sampler, SCHEDULES[sampler.name], mask_id, top_p, cache, trace)


def discrete_phase(
    denoise: Denoiser,
    x: torch.Tensor,
    psi: torch.Tensor,
    grid: list[float],
    generators: list[torch.Generator],
    sampler: SamplerConfig,
    schedule: Schedule,
    mask_id: int,
    top_p: float = 0.9,
    cache: bool = True,
    trace: Trace | None = None,
) -> SampleResult:
    """Runs `schedule` over the times `grid` (len(grid) − 1 random steps, then the noise-removal argmax of
    x_θ at grid[-1]) from the state x [n, L] (ids, [MASK] where masked) and psi [n, L]; psi is updated in
    place. `trace` sees every random step k at the time it reached, then the final pass as k = len(grid) − 1."""
    n, steps = x.shape[0], len(grid) - 1
    logits: list[torch.Tensor] = [torch.empty(0, device=x.device)] * n  # per sequence [L, V], [MASK] suppressed
    stale = torch.ones(n, dtype=torch.bool, device=x.device)
    nfe = [0] * n
    remasks: list[list[list[int]]] = [[] for _ in range(n)]
    current_confidence = sampler.name in CURRENT_CONFIDENCE
    temperature = getattr(sampler, "temperature", 1.0)
    for k in range(steps + 1):
        _refresh(denoise, x, logits, stale, mask_id)
        for i in stale.nonzero().flatten().tolist():
            nfe[i] += 1
        masked = x == mask_id
        if k == steps:
            new_x = torch.where(masked, torch.stack([row.argmax(dim=-1) for row in logits]), x)
        else:
            scores = visible_confidence(logits, x) if current_confidence else psi
            alpha_t, alpha_s, sigma = schedule(sampler, grid[k], grid[k + 1], scores, ~masked)
            new_x = x.clone()
            for i, generator in enumerate(generators):
                sent_back = _step_one(new_x[i], psi[i], masked[i], logits[i], alpha_t, alpha_s, sigma[i], mask_id,
                                      top_p, generator, sampler.nucleus, temperature)
                remasks[i] += [[k, pos, int(x[i, pos])] for pos in sent_back]
        stale = (new_x != x).any(dim=-1) if cache else torch.ones(n, dtype=torch.bool, device=x.device)
        x = new_x
        if trace is not None:
            trace(k, grid[min(k + 1, steps)], x)
    return SampleResult(tokens=x, nfe=nfe, psi=psi, remasks=remasks)


def visible_confidence(logits: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """[n, L] fp64: the model's probability of the token each position holds, softmax of the raw logits
    ([MASK] suppressed) as the denoiser returns them. The model's raw output at a visible position is its
    own prediction there: SUBS's carry-over of visible tokens (diffusion/mdlm.py) is applied only in the
    training loss, never by the model or the denoiser. ([MASK] positions get ≈ 0; schedules ignore them.)"""
    return torch.stack([
        (row.double().gather(-1, ids[:, None]).squeeze(-1) - torch.logsumexp(row.double(), dim=-1)).exp()
        for row, ids in zip(logits, x)
    ])


def _step_one(x, psi, masked, logits, alpha_t, alpha_s, sigma, mask_id, top_p, generator,
              nucleus: str = "reference", temperature: float = 1.0) -> list[int]:
    """One sequence's step, in place on x [L] and psi [L]; returns the positions it remasked. Noise: 2 per
    position, then one per nucleus id of each position that unmasks, in position order. Tokens are drawn from
    the nucleus of softmax(logits / temperature)."""
    stay, leave = transition_groups(masked, alpha_t, alpha_s, sigma)
    moves = gumbel_max(torch.stack([stay, leave], dim=-1), gumbel_noise((x.shape[0], 2), generator)) == 1
    remask = moves & ~masked
    x[remask] = mask_id
    psi[remask] = 0.0
    sent_back = remask.nonzero().flatten().tolist()
    unmask = (moves & masked).nonzero().flatten()
    if len(unmask) == 0:
        return sent_back
    rows = logits[unmask] if temperature == 1.0 else logits[unmask] / temperature
    for (ids, probs), pos in zip(nucleus_rows(rows, top_p, nucleus), unmask.tolist()):
        pick = gumbel_max(probs, gumbel_noise((len(ids),), generator))
        x[pos] = ids[pick]
        psi[pos] = probs[pick]
    return sent_back


def _refresh(denoise: Denoiser, x: torch.Tensor, logits: list[torch.Tensor], stale: torch.Tensor,
             mask_id: int) -> None:
    rows = stale.nonzero().flatten().tolist()
    if rows:
        fresh = suppress_mask_logit_(denoise(x[rows]).float(), mask_id)
        for j, i in enumerate(rows):
            logits[i] = fresh[j]
