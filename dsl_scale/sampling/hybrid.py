"""DSL's hybrid sampler (docs/method.md §5): a few continuous steps, then ReMDM-loop on the discrete draft.

Reading of "continuous draft, then ReMDM-loop":
1. `continuous_steps` = C steps of the continuous sampler (continuous.py) from s = 0 to `draft_snr`
   (log grid from s_min, by default continuous.snr_window's start), then the draft = argmax of x_θ at
   that z (the draw's randomness is already in the SDE path); each position's confidence
   ψ = x_θ(draft token). NFE 2C.
2. The draft stands in for the loop's first phase (t > t_on, MDLM from α = 0 up to α_on): the
   round(α_on·L) most confident draft positions are kept (ties: the earlier position), the others
   re-masked, so the state has the loop's α at t_on, and the loop continues from t = t_on exactly as
   `remdm_loop` would: remasking with σ = η on (t_off, t_on], MDLM from α_on to 1 below t_off, then the
   noise-removal argmax. Its grid is linspace(t_on, 1e-5, steps − C + 1) (`steps` counts both phases:
   steps − C random steps), on the discrete path (tokens / [MASK] through the embedding table), with the
   loop's x_θ caching. NFE ≤ 2C + (steps − C) + 1.
"""

from __future__ import annotations

import torch

from dsl_scale.sampling.config import HybridSampler
from dsl_scale.sampling.continuous import ContinuousDenoiser, Localizer, localize_path
from dsl_scale.sampling.generate import SampleResult, Trace, discrete_phase, sample_generators, state_device
from dsl_scale.sampling.schedules import loop


def remask_draft(draft: torch.Tensor, psi: torch.Tensor, keep: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keeps the `keep` most confident positions of each row of draft [n, L]; the rest → [MASK], ψ 0."""
    order = torch.sort(-psi, dim=-1, stable=True).indices
    kept = torch.zeros_like(draft, dtype=torch.bool).scatter_(-1, order[:, :keep], True)
    return torch.where(kept, draft, mask_id), torch.where(kept, psi, 0.0)


@torch.no_grad()
def sample_dsl_hybrid(denoise: ContinuousDenoiser, indices: list[int], seq_len: int, steps: int, mask_id: int,
                      seed: int, sampler: HybridSampler | None = None, top_p: float = 0.9, t_final: float = 1e-5,
                      trace: Trace | None = None) -> SampleResult:
    """`trace` sees the re-masked draft as step −1 (at t_on), then every discrete step."""
    sampler = sampler or HybridSampler(name="dsl_hybrid")
    if not 1 <= sampler.continuous_steps < steps:
        raise ValueError(f"dsl_hybrid needs 1 <= continuous_steps={sampler.continuous_steps} < steps={steps}")
    loc = Localizer(denoise, mask_id, top_p, sampler.nucleus, sampler.temperature)
    grid = loc.grid(sampler.continuous_steps, sampler.s_min, sampler.draft_snr)
    generators = sample_generators(seed, indices, state_device(denoise))
    logits = loc.logits(localize_path(loc, seq_len, grid, sampler.noise_scale, generators))
    draft = logits.argmax(dim=-1)
    psi = torch.softmax(logits.double(), dim=-1).gather(-1, draft[..., None]).squeeze(-1)
    x, psi = remask_draft(draft, psi, round(sampler.alpha_on * seq_len), mask_id)
    if trace is not None:
        trace(-1, sampler.t_on, x)
    times = torch.linspace(sampler.t_on, t_final, steps - sampler.continuous_steps + 1, dtype=torch.float64,
                           device="cpu")
    result = discrete_phase(denoise, x, psi, times.tolist(), generators, sampler, loop, mask_id, top_p,
                            trace=trace)
    result.nfe = [loc.calls + n for n in result.nfe]
    return result
