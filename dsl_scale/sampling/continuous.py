"""DSL's continuous sampler (docs/method.md §5): integrate the localization SDE in z, then argmax x_θ.

The channel z_s = s·K_x + W_s is a Brownian motion with drift K_x; given z alone its drift is the
posterior mean x̂(z) = Σ_v p_θ(v | z) K_v, so dz = x̂(z) ds + g dW. g = 1 is the exact sampler (z_s then
has the channel's marginal); g < 1 is docs/method.md §5's noise-scale knob (its drift is not rescaled, so
marginals are only exact at g = 1; g = 0 gives every position the same token, since all start at z = 0
with identical inputs).

Steps, in z (the noise is additive there, so a step's Brownian increment is drawn exactly, N(0, g²h) per
dimension for a step of length h, and nothing of the drift acts on it; integrating in y = z/s instead
and adding ∫ g/s dW to both Heun stages, as this module once did, inflated the output noise by
((r + 1)/2r)·√r per step of ratio r = s₁/s₀): z = 0 at s = 0 (the [MASK] endpoint); one Euler–Maruyama
step to s_1, where x̂ is still ≈ the prior mean (see `snr_window`), then Heun steps on the drift only
(predictor and corrector share the increment) over the log-spaced grid s_1 < … < s_T. NFE per sequence:
1 + 2(T − 1) + 1 (final argmax) = 2T.

The grid (`snr_window`): where the posterior moves, from the channel's geometry. With keys of squared
norm κ in d dimensions and V tokens:
- start s_lo = 1/(2κ): for small s the information gained, I(x; z_s) ≈ s·mmse(0)/2 ≈ sκ/2 nats (I-MMSE,
  mmse(0) = E‖K_x − K̄‖² ≈ κ), reaches 1/4 nat there; below it x̂ ≈ the prior mean, one step suffices;
- end s_hi = 2·ln(V/δ) / (κ(1 − c)), δ = 1e-3: the true token's posterior log-odds against a competitor
  y grow as sκ(1 − c_xy) and must beat the V − 1 competitors' noise and ln(1/δ) (the factor 2 covers the
  noise, √(2sκ(1 − c))·N(0, 1)); c ≈ √(2 ln V / d) is the typical largest cosine between a random key and
  the others (capped at 0.9). 29 symbols, d = 48: [0.5, 33]; GPT-2's 50,257 tokens, d = 48: [0.5, 108].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.sampling.config import ContinuousSampler
from dsl_scale.sampling.generate import SampleResult, sample_generators, state_device
from dsl_scale.sampling.steps import nucleus_rows

PosteriorMean = Callable[[torch.Tensor], torch.Tensor]  # z [n, L, d] → x̂ [n, L, d] fp64


class ContinuousDenoiser(Protocol):
    keys: torch.Tensor | None  # K [V, d]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor: ...  # ids [b, L] → logits [b, L, V]

    def from_z(self, z: torch.Tensor) -> torch.Tensor: ...  # z [b, L, d] → logits [b, L, V]


def require_keys(denoise: ContinuousDenoiser) -> torch.Tensor:
    keys = getattr(denoise, "keys", None)
    if keys is None or not hasattr(denoise, "from_z"):
        raise ValueError("the DSL samplers need a DSL checkpoint (a DiT with a converter)")
    return keys


def snr_window(keys: torch.Tensor, mask_id: int | None = None, delta: float = 1e-3) -> tuple[float, float]:
    """(s_lo, s_hi): where the posterior of the channel with keys K [V, d] moves (module docstring). The
    [MASK] row, if given, is not a token."""
    vocab = keys.shape[0] - (mask_id is not None and 0 <= mask_id < keys.shape[0])
    kappa = float(keys.double().pow(2).sum(-1).mean())
    overlap = min(0.9, math.sqrt(2.0 * math.log(max(vocab, 2)) / keys.shape[1]))
    return 1.0 / (2.0 * kappa), 2.0 * math.log(max(vocab, 2) / delta) / (kappa * (1.0 - overlap))


def snr_points(steps: int, s_min: float, s_max: float) -> list[float]:
    """T log-spaced SNRs from s_min to s_max (T = 1: just s_max)."""
    if steps == 1:
        return [s_max]
    return torch.logspace(math.log10(s_min), math.log10(s_max), steps, dtype=torch.float64, device="cpu").tolist()


def dsl_llada_snr_points(steps: int) -> list[float]:
    """fengsxy/DSL-LLaDA's "sensitive" SNR schedule with `steps` points: of its steps − 1 intervals, ⌊5 %⌋
    (at least one) log-spaced over [0.01, 7], ⌊90 %⌋ (at least one) over [7, 74], the rest over [74, 100]
    (there, a schedule of n Heun steps has n + 1 points from 0.01). Needs steps >= 3."""
    if steps < 3:
        raise ValueError(f"snr_schedule=dsl_llada needs steps >= 3 (two log segments), got {steps}")
    intervals = steps - 1
    n1, n2 = max(1, int(intervals * 0.05)), max(1, int(intervals * 0.90))
    n3 = intervals - n1 - n2

    def segment(lo: float, hi: float, k: int) -> list[float]:
        return torch.logspace(math.log10(lo), math.log10(hi), k + 1, dtype=torch.float64, device="cpu").tolist()

    return segment(0.01, 7.0, n1) + segment(7.0, 74.0, n2)[1:] + (segment(74.0, 100.0, n3)[1:] if n3 > 0 else [])


def dsl_llada_noise_scale(nfe: int) -> float:
    """DSL-LLaDA's noise scale for a budget of `nfe` evaluations (its adaptive rule)."""
    return 0.1 if nfe <= 8 else 0.05 if nfe <= 16 else 0.01 if nfe <= 32 else 0.005


def noise_std(s0: float, s1: float, g: float) -> float:
    """Standard deviation of the Brownian increment g·(W_{s1} − W_{s0}) per dimension."""
    return g * math.sqrt(s1 - s0)


def heun_step(z: torch.Tensor, s0: float, s1: float, x_hat: PosteriorMean, xi: torch.Tensor) -> torch.Tensor:
    """One predictor–corrector step of dz = x̂(z) ds + g dW from s0 to s1, the increment xi = g·ΔW given
    (the same in both stages: the noise is additive, so Heun on the drift alone keeps its law exact)."""
    h = s1 - s0
    f0 = x_hat(z)
    predicted = z + h * f0 + xi
    return z + 0.5 * h * (f0 + x_hat(predicted)) + xi


def posterior_mean(logits: torch.Tensor, keys: torch.Tensor, top_p: float, nucleus: str = "reference",
                   top_k: int = 0) -> torch.Tensor:
    """x̂ = Σ_v p(v) K_v with p the nucleus of softmax(logits) (logits [n, L, V], [MASK] suppressed), or, with
    top_k > 0, the k most probable tokens' softmax renormalised (DSL-LLaDA's x̂; top_p then unused). One
    sequence at a time, so a row's rounding does not depend on the batch."""
    k = keys.double()
    out = []
    for seq in logits:
        if top_k > 0:
            probs = torch.softmax(seq.double(), dim=-1)
            top, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
            out.append(((top / top.sum(-1, keepdim=True))[..., None] * k[ids]).sum(-2))
        elif top_p >= 1.0:
            out.append(torch.softmax(seq.double(), dim=-1) @ k)
        else:
            out.append(torch.stack([probs @ k[ids] for ids, probs in nucleus_rows(seq, top_p, nucleus)]))
    return torch.stack(out)


class Localizer:
    """x̂ and x_θ logits from a continuous denoiser, counting evaluations per sequence."""

    def __init__(self, denoise: ContinuousDenoiser, mask_id: int, top_p: float, nucleus: str = "reference",
                 temperature: float = 1.0, top_k: int = 0, beta_scale: float = 1.0):
        self.denoise, self.mask_id, self.top_p, self.nucleus = denoise, mask_id, top_p, nucleus
        self.temperature, self.top_k, self.beta_scale = temperature, top_k, beta_scale
        self.keys = require_keys(denoise)
        self.calls = 0

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with sharpened(self.denoise, self.beta_scale):
            return suppress_mask_logit_(self.denoise.from_z(z.float()).float(), self.mask_id)

    def x_hat(self, z: torch.Tensor) -> torch.Tensor:
        return posterior_mean(self.logits(z) / self.temperature, self.keys, self.top_p, self.nucleus, self.top_k)

    def grid(self, steps: int, s_min: float | None, s_max: float | None) -> list[float]:
        """`steps` log-spaced SNRs over [s_min, s_max], each bound from `snr_window` where not given."""
        s_lo, s_hi = snr_window(self.keys, self.mask_id)
        s_min, s_max = s_lo if s_min is None else s_min, s_hi if s_max is None else s_max
        if not 0 < s_min < s_max:
            raise ValueError(f"the SNR grid needs 0 < s_min={s_min} < {s_max} (the grid's last SNR); the keys' "
                             f"own window is [{s_lo:.3g}, {s_hi:.3g}]")
        return snr_points(steps, s_min, s_max)


class sharpened:
    """Within the block, the denoiser's converter reads z with β·scale instead of β (DSL-LLaDA's inference β:
    softmax(β·z·Kᵀ + b) over the slots); restored on exit. scale 1: nothing is touched."""

    def __init__(self, denoise: ContinuousDenoiser, scale: float):
        model = getattr(denoise, "model", None)
        self.converter = getattr(model, "converter", None) if scale != 1.0 else None
        if scale != 1.0 and self.converter is None:
            raise ValueError(f"sampler.beta_scale={scale} sharpens DSL's converter, but the denoiser has none")
        self.scale = scale

    def __enter__(self) -> None:
        if self.converter is not None:
            self.saved = self.converter.beta.data.clone()
            self.converter.beta.data.mul_(self.scale)

    def __exit__(self, *exc) -> None:
        if self.converter is not None:
            self.converter.beta.data.copy_(self.saved)


def _normal(generators: list[torch.Generator], shape: tuple[int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float64, device=g.device) for g in generators])


def localize_path(loc: Localizer, seq_len: int, grid: list[float], g: float,
                  generators: list[torch.Generator]) -> torch.Tensor:
    """From z = 0 at s = 0 to z at s = grid[-1] [n, L, d] fp64; 2·len(grid) − 1 evaluations."""
    shape = (seq_len, loc.keys.shape[1])
    z = torch.zeros(len(generators), *shape, dtype=torch.float64, device=state_device(loc.denoise))
    # Euler–Maruyama over [0, s_1]: z = s_1·x̂(0) + g·W_{s_1}.
    z = grid[0] * loc.x_hat(z) + noise_std(0.0, grid[0], g) * _normal(generators, shape)
    for s0, s1 in zip(grid, grid[1:]):
        xi = noise_std(s0, s1, g) * _normal(generators, shape)
        z = heun_step(z, s0, s1, loc.x_hat, xi)
    return z


@torch.no_grad()
def sample_dsl_continuous(denoise: ContinuousDenoiser, indices: list[int], seq_len: int, steps: int, mask_id: int,
                          seed: int, sampler: ContinuousSampler | None = None, top_p: float = 0.9) -> SampleResult:
    """`steps` = T: T continuous steps up to s_max, then the argmax of x_θ there (NFE 2T per sequence)."""
    sampler = sampler or ContinuousSampler(name="dsl_continuous")
    loc = Localizer(denoise, mask_id, top_p, sampler.nucleus, sampler.temperature, sampler.x_hat_top_k,
                    sampler.beta_scale)
    if sampler.snr_schedule == "dsl_llada":
        grid = dsl_llada_snr_points(steps)
    else:
        grid = loc.grid(steps, sampler.s_min, sampler.s_max)
    g = dsl_llada_noise_scale(2 * steps) if sampler.noise_rule == "dsl_llada" else sampler.noise_scale
    generators = sample_generators(seed, indices, state_device(denoise))
    z = localize_path(loc, seq_len, grid, g, generators)
    logits = loc.logits(z)
    tokens = logits.argmax(dim=-1)
    psi = torch.softmax(logits.double(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    return SampleResult(tokens=tokens, nfe=[loc.calls] * len(indices), psi=psi)
