"""Remasking schedules (SPEC §5): per step t → s, the α pair and σ per position. Pure tensor code.

Each schedule is `(cfg, t, s, psi, unmasked) -> (alpha_t, alpha_s, sigma [n, L] fp64)`, with σ already
within [0, σ_max]. `psi` [n, L] holds the probability each unmasked token had when it was unmasked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dsl_scale.sampling.config import SamplerConfig
from dsl_scale.sampling.steps import sigma_max

Coefficients = tuple[float, float, torch.Tensor]
Schedule = Callable[[SamplerConfig, float, float, torch.Tensor, torch.Tensor], Coefficients]


def _constant(sigma: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full(like.shape, sigma, dtype=torch.float64, device=like.device)


def mdlm(cfg: SamplerConfig, t: float, s: float, psi: torch.Tensor, unmasked: torch.Tensor) -> Coefficients:
    return 1.0 - t, 1.0 - s, _constant(0.0, unmasked)


def cap(cfg: SamplerConfig, t: float, s: float, psi: torch.Tensor, unmasked: torch.Tensor) -> Coefficients:
    a_t, a_s = 1.0 - t, 1.0 - s
    return a_t, a_s, _constant(min(cfg.eta, sigma_max(a_t, a_s)), unmasked)


def rescale(cfg: SamplerConfig, t: float, s: float, psi: torch.Tensor, unmasked: torch.Tensor) -> Coefficients:
    a_t, a_s = 1.0 - t, 1.0 - s
    return a_t, a_s, _constant(min(cfg.eta, 1.0) * sigma_max(a_t, a_s), unmasked)


def conf(cfg: SamplerConfig, t: float, s: float, psi: torch.Tensor, unmasked: torch.Tensor) -> Coefficients:
    """σ^ℓ = softmax over unmasked ℓ of (−ψ^ℓ), times σ_max; masked positions get σ = 0."""
    a_t, a_s = 1.0 - t, 1.0 - s
    scores = torch.where(unmasked, -psi.double(), torch.full_like(psi, float("-inf"), dtype=torch.float64))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with nothing unmasked → all 0
    return a_t, a_s, weights * sigma_max(a_t, a_s)


def loop_alpha(cfg: SamplerConfig, t: float) -> float:
    """Loop's α(t): 0 → α_on linearly over (t_on, 1], α_on on (t_off, t_on], α_on → 1 on [0, t_off]."""
    if t > cfg.t_on:
        return cfg.alpha_on * (1.0 - t) / (1.0 - cfg.t_on)
    if t > cfg.t_off:
        return cfg.alpha_on
    return cfg.alpha_on + (1.0 - cfg.alpha_on) * (cfg.t_off - t) / cfg.t_off


def loop(cfg: SamplerConfig, t: float, s: float, psi: torch.Tensor, unmasked: torch.Tensor) -> Coefficients:
    """Remasking (σ = η, clipped to σ_max) only for steps starting in the middle phase t_off < t ≤ t_on."""
    a_t, a_s = loop_alpha(cfg, t), loop_alpha(cfg, s)
    sigma = min(cfg.eta, sigma_max(a_t, a_s)) if cfg.t_off < t <= cfg.t_on else 0.0
    return a_t, a_s, _constant(sigma, unmasked)


SCHEDULES: dict[str, Schedule] = {
    "mdlm": mdlm, "remdm_cap": cap, "remdm_rescale": rescale, "remdm_conf": conf, "remdm_loop": loop,
}
