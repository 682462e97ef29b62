"""Remasking schedules (docs/method.md §5): per step t → s, the α pair and σ per position. Pure tensor code.

Each schedule is `(cfg, t, s, psi, unmasked) -> (alpha_t, alpha_s, sigma [n, L] fp64)`, with σ already
within [0, σ_max]. `psi` [n, L] holds the probability each unmasked token had when it was unmasked, except
for the schedules in CURRENT_CONFIDENCE, which get the model's current probability of each visible token
instead (from the same forward that gives this step's x_θ, so it costs no evaluation).
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


def loop_phase_alphas(cfg: SamplerConfig, t: float, s: float) -> tuple[float, float]:
    """(α_t, α_s) of loop's step t → s, the phase chosen by t alone as kuleshov-group/remdm does: a step
    starting above t_on takes both from the first phase's line (so the step across t_on ends at
    α_s = α_on(1 − s)/(1 − t_on) > α_on, up to 1 and beyond for a long step), one starting in the middle
    phase has α_t = α_s = α_on (also across t_off), one starting at or below t_off the last phase's line."""
    if t > cfg.t_on or t <= cfg.t_off:
        line = cfg.alpha_on * (1.0 - s) / (1.0 - cfg.t_on) if t > cfg.t_on else loop_alpha(cfg, s)
        return loop_alpha(cfg, t), line
    return cfg.alpha_on, cfg.alpha_on


def loop(cfg: SamplerConfig, t: float, s: float, psi: torch.Tensor, unmasked: torch.Tensor) -> Coefficients:
    """Remasking (σ = η, clipped to σ_max) only for steps starting in the middle phase t_off < t ≤ t_on."""
    a_t, a_s = loop_phase_alphas(cfg, t, s)
    sigma = min(cfg.eta, sigma_max(a_t, a_s)) if cfg.t_off < t <= cfg.t_on else 0.0
    return a_t, a_s, _constant(sigma, unmasked)


def confidence(cfg: SamplerConfig, t: float, s: float, conf: torch.Tensor, unmasked: torch.Tensor) -> Coefficients:
    """remdm_confidence: loop's α schedule and remasking budget, spent where the model doubts a token.

    In loop's middle phase a visible token ℓ is remasked with σ^ℓ = η·w^ℓ / mean_visible(w), w^ℓ = 1 − c^ℓ,
    c^ℓ = the model's current probability of the token it sees at ℓ (clipped to σ_max): the same expected
    number of remaskings per step as remdm_loop (η per visible token), moved from the tokens the model
    believes to those it doubts. Masked positions keep σ = η, so unmasking still balances remasking at
    α = α_on. Rows whose visible tokens are all certain (w = 0) remask nothing. Outside the middle phase: MDLM.
    What c means depends on the checkpoint: DSL trains its prediction at every position (docs/method.md §4), so c is a
    learned judgement of the visible token; MDLM's SUBS loss never reaches the raw output at visible
    positions (diffusion/mdlm.py), so with an MDLM checkpoint c is untrained: the control arm.
    """
    a_t, a_s, sigma = loop(cfg, t, s, conf, unmasked)
    if not cfg.t_off < t <= cfg.t_on:
        return a_t, a_s, sigma
    doubt = torch.where(unmasked, 1.0 - conf.double(), torch.zeros((), dtype=torch.float64, device=conf.device))
    mean_doubt = doubt.sum(-1, keepdim=True) / unmasked.sum(-1, keepdim=True).clamp_min(1)
    share = torch.where(mean_doubt > 0, doubt / mean_doubt.clamp_min(1e-300), torch.zeros_like(doubt))
    visible = (cfg.eta * share).clamp(max=sigma_max(a_t, a_s))
    return a_t, a_s, torch.where(unmasked, visible, sigma)


# Schedules whose `psi` argument is the model's current probability of each visible token (see above).
CURRENT_CONFIDENCE = frozenset({"remdm_confidence"})


SCHEDULES: dict[str, Schedule] = {
    "mdlm": mdlm, "remdm_cap": cap, "remdm_rescale": rescale, "remdm_conf": conf, "remdm_loop": loop,
    "remdm_confidence": confidence,
}
