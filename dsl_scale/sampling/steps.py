"""Sampler step rules as pure functions of tensors (SPEC §5). Probabilities in fp64.

Each rule returns the per-position categorical over V + 1 outcomes: the V token ids, where the
[MASK] id column means "(stay or become) masked". Draws are Gumbel-max in fp64.
"""

from __future__ import annotations

import torch


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus truncation: keep the smallest set of ids whose mass reaches top_p, renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = torch.where(mass_before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def mdlm_step_probs(x: torch.Tensor, x_theta: torch.Tensor, t: float, s: float, mask_id: int) -> torch.Tensor:
    """MDLM ancestral step from time t to s < t with α = 1 − t.

    x: [..., L] current ids; x_theta: [..., L, V] clean-token distribution (mask column ignored).
    Masked positions: v with x_θ[v]·(α_s − α_t)/(1 − α_t), [MASK] with (1 − α_s)/(1 − α_t).
    Unmasked positions: their own id with probability 1.
    """
    alpha_t, alpha_s = 1.0 - t, 1.0 - s
    probs = x_theta.double().clone()
    probs[..., mask_id] = 0.0
    probs = probs / probs.sum(dim=-1, keepdim=True) * ((alpha_s - alpha_t) / (1 - alpha_t))
    probs[..., mask_id] = (1 - alpha_s) / (1 - alpha_t)
    carried = torch.zeros_like(probs).scatter_(-1, x[..., None], 1.0)
    return torch.where((x == mask_id)[..., None], probs, carried)


def gumbel_max(probs: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
    """argmax(log p + g) with g standard Gumbel noise of the same shape (fp64)."""
    return (probs.double().log() + gumbel).argmax(dim=-1)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp_min(1e-300)))
