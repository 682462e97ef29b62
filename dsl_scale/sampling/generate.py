"""Batch MDLM ancestral sampling with per-sequence seeds and x_θ caching (SPEC §5).

Every random draw of sample i comes from a generator seeded by (seed, i), so a sample does not
depend on the batch it was drawn in or on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.sampling.steps import gumbel_max, gumbel_noise, mdlm_step_probs, top_p_filter
from dsl_scale.train.seeding import derive_seed

SAMPLE_STREAM = 5


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [n, L]
    nfe: list[int]


@torch.no_grad()
def sample_mdlm(
    denoise: Callable[[torch.Tensor], torch.Tensor],
    indices: list[int],
    seq_len: int,
    steps: int,
    mask_id: int,
    seed: int,
    top_p: float = 0.9,
    t_final: float = 1e-5,
    cache: bool = True,
) -> SampleResult:
    """denoise(z [b, L]) → logits [b, L, V]. Returns the samples of `indices` and their NFE.

    With `cache`, a sequence that a step left unchanged reuses its x_θ instead of a new forward pass.
    """
    n = len(indices)
    generators = [torch.Generator().manual_seed(derive_seed(seed, SAMPLE_STREAM, i)) for i in indices]
    x = torch.full((n, seq_len), mask_id, dtype=torch.long)
    grid = torch.linspace(1.0, t_final, steps + 1, dtype=torch.float64).tolist()
    x_theta: torch.Tensor | None = None
    stale = torch.ones(n, dtype=torch.bool)
    nfe = [0] * n
    for k in range(steps):
        x_theta = _refresh(denoise, x, x_theta, stale, mask_id, top_p)
        for i in stale.nonzero().flatten().tolist():
            nfe[i] += 1
        t, s = grid[k], grid[k + 1]
        if k == steps - 1:
            new_x = torch.where(x == mask_id, x_theta.argmax(dim=-1), x)
        else:
            probs = mdlm_step_probs(x, x_theta, t, s, mask_id)
            noise = torch.stack([gumbel_noise(tuple(probs.shape[1:]), g) for g in generators])
            new_x = gumbel_max(probs, noise)
        stale = (new_x != x).any(dim=-1) if cache else torch.ones(n, dtype=torch.bool)
        x = new_x
    return SampleResult(tokens=x, nfe=nfe)


def _refresh(denoise, x, x_theta, stale, mask_id, top_p):
    if not stale.any():
        return x_theta
    logits = denoise(x[stale]).double()
    suppress_mask_logit_(logits, mask_id)
    fresh = top_p_filter(torch.softmax(logits, dim=-1), top_p)
    if x_theta is None:
        return fresh
    x_theta = x_theta.clone()
    x_theta[stale] = fresh
    return x_theta
