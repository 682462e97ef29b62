"""DSL's continuous sampler (SPEC §5): integrate the localization SDE in y = z/s, then argmax x_θ.

The channel z_s = s·K_x + W_s is a Brownian motion with drift K_x; given z alone its drift is the
posterior mean x̂(z) = Σ_v p_θ(v | z) K_v, so dz = x̂ ds + g dW and, with y = z/s,
    dy = (x̂(s·y) − y)/s ds + (g/s) dW.
g = 1 is the exact sampler (z_s then has the channel's marginal); g < 1 is the SPEC's noise-scale knob
(its drift is not rescaled, so marginals are only exact at g = 1; g = 0 gives every position the
same token, since all start at z = 0 with identical inputs).

Steps: z = 0 at s = 0 (the [MASK] endpoint); one Euler–Maruyama step in z to s_1 (y is singular at
s = 0), then Heun steps on the log-spaced grid s_1 < … < s_T with the noise integral drawn exactly:
∫ g/s dW over [s_k, s_{k+1}] ~ N(0, g²(1/s_k − 1/s_{k+1})). The same draw enters predictor and
corrector (Heun for additive noise). NFE per sequence: 1 + 2(T − 1) + 1 (final argmax) = 2T.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from dsl_scale.diffusion.mdlm import suppress_mask_logit_
from dsl_scale.sampling.config import ContinuousSampler
from dsl_scale.sampling.generate import SampleResult, sample_generators
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


def snr_points(steps: int, s_min: float, s_max: float) -> list[float]:
    """T log-spaced SNRs from s_min to s_max (T = 1: just s_max)."""
    if steps == 1:
        return [s_max]
    return torch.logspace(math.log10(s_min), math.log10(s_max), steps, dtype=torch.float64, device="cpu").tolist()


def noise_std(s0: float, s1: float, g: float) -> float:
    """Standard deviation of ∫_{s0}^{s1} (g/s) dW."""
    return g * math.sqrt(1.0 / s0 - 1.0 / s1)


def heun_step(y: torch.Tensor, s0: float, s1: float, x_hat: PosteriorMean, xi: torch.Tensor) -> torch.Tensor:
    """One predictor–corrector step of dy = (x̂(s·y) − y)/s ds + noise, the noise increment xi given."""
    h = s1 - s0
    f0 = (x_hat(s0 * y) - y) / s0
    predicted = y + h * f0 + xi
    f1 = (x_hat(s1 * predicted) - predicted) / s1
    return y + 0.5 * h * (f0 + f1) + xi


def posterior_mean(logits: torch.Tensor, keys: torch.Tensor, top_p: float) -> torch.Tensor:
    """x̂ = Σ_v p(v) K_v with p the nucleus of softmax(logits) (logits [n, L, V], [MASK] suppressed). One
    sequence at a time, so a row's rounding does not depend on the batch."""
    k = keys.double()
    out = []
    for seq in logits:
        if top_p >= 1.0:
            out.append(torch.softmax(seq.double(), dim=-1) @ k)
        else:
            out.append(torch.stack([probs @ k[ids] for ids, probs in nucleus_rows(seq, top_p)]))
    return torch.stack(out)


class Localizer:
    """x̂ and x_θ logits from a continuous denoiser, counting evaluations per sequence."""

    def __init__(self, denoise: ContinuousDenoiser, mask_id: int, top_p: float):
        self.denoise, self.mask_id, self.top_p = denoise, mask_id, top_p
        self.keys = require_keys(denoise)
        self.calls = 0

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return suppress_mask_logit_(self.denoise.from_z(z.float()).float(), self.mask_id)

    def x_hat(self, z: torch.Tensor) -> torch.Tensor:
        return posterior_mean(self.logits(z), self.keys, self.top_p)


def _normal(generators: list[torch.Generator], shape: tuple[int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float64, device=g.device) for g in generators])


def localize_path(loc: Localizer, seq_len: int, grid: list[float], g: float,
                  generators: list[torch.Generator]) -> torch.Tensor:
    """From z = 0 at s = 0 to z at s = grid[-1] [n, L, d] fp64; 2·len(grid) − 1 evaluations."""
    shape = (seq_len, loc.keys.shape[1])
    z0 = torch.zeros(len(generators), *shape, dtype=torch.float64, device="cpu")  # host-side state
    # Euler–Maruyama in z over [0, s_1]: z = s_1·x̂(0) + g·√s_1·ε, i.e. y = x̂(0) + g·ε/√s_1.
    y = loc.x_hat(z0) + g / math.sqrt(grid[0]) * _normal(generators, shape)
    for s0, s1 in zip(grid, grid[1:]):
        xi = noise_std(s0, s1, g) * _normal(generators, shape)
        y = heun_step(y, s0, s1, loc.x_hat, xi)
    return grid[-1] * y


@torch.no_grad()
def sample_dsl_continuous(denoise: ContinuousDenoiser, indices: list[int], seq_len: int, steps: int, mask_id: int,
                          seed: int, sampler: ContinuousSampler | None = None, top_p: float = 0.9) -> SampleResult:
    """`steps` = T: T continuous steps up to s_max, then the argmax of x_θ there (NFE 2T per sequence)."""
    sampler = sampler or ContinuousSampler(name="dsl_continuous")
    loc = Localizer(denoise, mask_id, top_p)
    generators = sample_generators(seed, indices)
    z = localize_path(loc, seq_len, snr_points(steps, sampler.s_min, sampler.s_max), sampler.noise_scale,
                      generators)
    logits = loc.logits(z)
    tokens = logits.argmax(dim=-1)
    psi = torch.softmax(logits.double(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    return SampleResult(tokens=tokens, nfe=[loc.calls] * len(indices), psi=psi)
