"""DSL: Discrete Stochastic Localization (docs/method.md §4). Pure tensor code: no process groups, no I/O.

Every position i of a sequence x is observed through a Gaussian localization channel with its own SNR s_i:
z_i = s_i·K_{x_i} + √s_i·ε_i, with K fixed, seeded, unit-norm token keys. Because ‖K_v‖ = 1, the exact
posterior p(v | z_i) = softmax_v(log π_v + ⟨z_i, K_v⟩) has no s in it, so one denoiser serves every SNR.

Input paths. Each position takes one of two ways into the backbone:
- continuous (`discrete` False, 0 ≤ s < ∞): z goes through the converter (model/converter.py);
- discrete (`discrete` True): the embedding table, with the token itself where s = ∞ and [MASK] where
  s = 0. Only the exact-MDLM fraction of the schedule produces these during training; the discrete
  samplers feed every position this way.
`snr` holds 0 or `inf` at discrete positions, so the SNR alone tells which id a discrete position gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from dsl_scale.config import SNRMixtureConfig
from dsl_scale.core import counter_rng


def token_keys(vocab_size: int, dim: int, seed: int) -> torch.Tensor:
    """Unit-norm keys K [vocab_size, dim] (fp32), the same on every machine and library version.

    NumPy's legacy RandomState stream is frozen by NumPy's compatibility policy (NEP 19), unlike
    torch.randn, whose CPU kernels may change between versions and instruction sets.
    """
    bits = np.random.MT19937(np.random.SeedSequence(int(seed)))
    gauss = np.random.RandomState(bits).standard_normal((vocab_size, dim))
    keys = gauss / np.linalg.norm(gauss, axis=1, keepdims=True)
    return torch.from_numpy(keys.astype(np.float32))


@dataclass
class SNRSchedule(SNRMixtureConfig):
    """The per-sequence SNR mixture (docs/method.md §4). Its fields and defaults are the DSL objective's
    (dsl_scale/config.py SNRMixtureConfig: mdlm_fraction, p_roar, the ROAR and log-normal parameters, and
    eps for the exact-MDLM sequences)."""

    @classmethod
    def from_config(cls, objective) -> SNRSchedule:
        """From any object with these attribute names (the `objective` config node); others are ignored."""
        return cls(**{f.name: getattr(objective, f.name) for f in fields(cls) if hasattr(objective, f.name)})


# Which branch of the mixture a sequence drew.
LOGNORMAL, ROAR, MDLM = 0, 1, 2

# The draws made from a sequence's key (core/counter_rng.py). The branches are exclusive per sequence, so the
# MDLM mask and the ROAR order share one draw of per-position words.
ROW_DRAW, NUM_CLEAN_DRAW, POSITION_DRAW, LEVEL_DRAW, LOGNORMAL_DRAW, NOISE_DRAW = range(6)


@dataclass
class SNRDraw:
    """A batch of sequences' SNRs: every branch is drawn for every row, and each row keeps its own."""

    snr: torch.Tensor  # [b, L] float64; inf (clean) or 0 (masked) where discrete
    discrete: torch.Tensor  # [b, L] bool: embedding-table path
    kind: torch.Tensor  # [b] LOGNORMAL, ROAR or MDLM
    num_clean: torch.Tensor  # [b] ROAR's k; -1 for the other branches


def roar_snr(seq_len: int, schedule: SNRSchedule, key: counter_rng.Key) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed ROAR: k ~ U{0..L−1}, a random order; its first k positions near s_max, the rest below 1.

    The order ranks the positions by 32-bit words (a stable sort breaks the rare ties by index, the same way on
    every device). Returns (snr [b, L], k [b])."""
    k = key.integers(seq_len, (), NUM_CLEAN_DRAW)
    order = key.bits((seq_len,), POSITION_DRAW)
    rank = torch.argsort(torch.argsort(order, dim=-1, stable=True), dim=-1, stable=True)
    clean = rank < k[..., None]
    level = key.uniform((seq_len,), LEVEL_DRAW).double()  # one level per position: clean or not, never both
    high = schedule.roar_clean_low * schedule.s_max + (1 - schedule.roar_clean_low) * schedule.s_max * level
    return torch.where(clean, high, schedule.roar_masked_high * level), k


def lognormal_snr(seq_len: int, schedule: SNRSchedule, key: counter_rng.Key) -> torch.Tensor:
    log_s = schedule.lognormal_mean + schedule.lognormal_std * key.normal((seq_len,), LOGNORMAL_DRAW).double()
    return log_s.exp().clamp(max=schedule.s_clamp)


def mdlm_snr(seq_len: int, schedule: SNRSchedule, key: counter_rng.Key, t: torch.Tensor) -> torch.Tensor:
    """Exact MDLM masking at times t [b]: each position masked (s = 0) with prob (1 − ε)t, else clean (s = ∞)."""
    u = key.uniform((seq_len,), POSITION_DRAW).double()
    masked = u < (1 - schedule.eps) * t[..., None]
    return torch.where(masked, 0.0, math.inf).to(torch.float64)


def draw_snr(seq_len: int, schedule: SNRSchedule, key: counter_rng.Key) -> SNRDraw:
    """The SNRs of one sequence per row of `key` (the caller's, from (seed, step, example position)): a branch
    u ~ U[0, 1) per sequence picks MDLM below mdlm_fraction, ROAR with probability p_roar of the rest, else
    log-normal; t ~ U[0, 1) is the exact-MDLM time."""
    row = key.uniform((2,), ROW_DRAW).double()
    branch, t = row[..., 0], row[..., 1]
    roar_below = schedule.mdlm_fraction + (1 - schedule.mdlm_fraction) * schedule.p_roar
    kind = torch.where(branch < schedule.mdlm_fraction, MDLM, torch.where(branch < roar_below, ROAR, LOGNORMAL))
    roar, k = roar_snr(seq_len, schedule, key)
    snr = torch.where((kind == ROAR)[..., None], roar, lognormal_snr(seq_len, schedule, key))
    snr = torch.where((kind == MDLM)[..., None], mdlm_snr(seq_len, schedule, key, t), snr)
    discrete = (kind == MDLM)[..., None].expand(snr.shape).contiguous()
    return SNRDraw(snr, discrete, kind, torch.where(kind == ROAR, k, -1))


def localize(keys: torch.Tensor, tokens: torch.Tensor, snr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The channel z = s·K_x + √s·ε (fp32). tokens/snr [..., L], noise [..., L, d] standard normal.

    Positions with an infinite SNR (discrete clean) get z = 0: they take the embedding path instead.
    """
    s = torch.where(torch.isfinite(snr), snr, 0.0).to(torch.float32)[..., None]
    return s * keys[tokens].float() + s.sqrt() * noise.float()


def discrete_ids(tokens: torch.Tensor, snr: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The embedding-path input ids: the token where s = ∞, [MASK] elsewhere (used only where discrete)."""
    return torch.where(torch.isinf(snr), tokens, torch.full_like(tokens, mask_id))


@dataclass
class Corrupted:
    """A batch through the channel. The backbone input is embed(ids) where `discrete`, converter(z) elsewhere."""

    z: torch.Tensor  # [b, L, d] fp32
    snr: torch.Tensor  # [b, L] float64
    discrete: torch.Tensor  # [b, L] bool
    ids: torch.Tensor  # [b, L] embedding-path ids
    kind: torch.Tensor  # [b] LOGNORMAL / ROAR / MDLM


def corrupt(tokens: torch.Tensor, keys: torch.Tensor, schedule: SNRSchedule, mask_id: int,
            words: Sequence[int | torch.Tensor] | torch.Tensor) -> Corrupted:
    """Draw SNRs and channel noise for each sequence of `tokens` [b, L] on its device, from the counter-based key
    of `words` (core/counter_rng.py): ints shared by the batch and at least one integer tensor [b] that tells
    the sequences apart (e.g. (seed, stream, step, positions in the global batch)). A sequence's draws depend
    on its own words only, never on its neighbours in the batch."""
    key = counter_rng.key(words, tokens.device)
    if key.batch_shape != tokens.shape[:1]:
        raise ValueError(f"corrupt needs key words with one entry per sequence (a tensor of shape "
                         f"{tuple(tokens.shape[:1])}); they give keys of shape {key.batch_shape}")
    seq_len, dim = tokens.shape[1], keys.shape[1]
    draw = draw_snr(seq_len, schedule, key)
    noise = key.normal((seq_len, dim), NOISE_DRAW)
    z = localize(keys, tokens, draw.snr, noise)
    return Corrupted(z, draw.snr, draw.discrete, discrete_ids(tokens, draw.snr, mask_id), draw.kind)


def dsl_loss(nll: torch.Tensor) -> torch.Tensor:
    """Unweighted cross-entropy over all positions, averaged per token. nll: [b, L] −log p_θ(x_i | z)."""
    return nll.mean()


# ---------------------------------------------------------------------------------------------------
# Likelihood bounds (evaluation only)

# (z [n, L, d], tokens [n, L]) → (x̂ = Σ_v p_θ(v | z) K_v [n, L, d], −log p_θ(x_i | z) [n, L]).
# The two reductions over the vocabulary are all a vocab-parallel model has to provide.
Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def denoiser_from_log_probs(log_posterior: Callable[[torch.Tensor], torch.Tensor], keys: torch.Tensor) -> Denoiser:
    """Adapts z → log p_θ(· | z) [n, L, V] (full vocabulary) to the `Denoiser` form."""

    def denoise(z: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_p = log_posterior(z).double()
        x_hat = log_p.exp() @ keys.double()
        return x_hat, -log_p.gather(-1, tokens[..., None]).squeeze(-1)

    return denoise


def bayes_log_posterior(keys: torch.Tensor, log_prior: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exact posterior of the channel under an independent prior π per position:
    log p(v | z) = log_softmax_v(log π_v + ⟨z, K_v⟩)."""
    k = keys.double()

    def log_posterior(z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(log_prior.double() + z.double() @ k.T, dim=-1)

    return log_posterior


@dataclass
class LikelihoodBound:
    mmse_integral: torch.Tensor  # [b] ½ ∫₀^{s*} Σ_i mmse_i(s) ds, nats
    ce: torch.Tensor  # [b] Σ_i −log p_θ(x_i | z_{s*}), nats
    mmse: torch.Tensor  # [G, b] Σ_i ‖K_{x_i} − x̂_i‖² on the grid

    @property
    def total(self) -> torch.Tensor:
        """Upper bound on −log p(x) per sequence (nats); equality for the exact posterior."""
        return self.mmse_integral + self.ce


def snr_grid(s_star: float = 100.0, points: int = 64, s_min: float = 1e-3) -> torch.Tensor:
    """0 followed by log-spaced SNRs up to s*: the integrand varies fastest at small s."""
    logs = torch.logspace(math.log10(s_min), math.log10(s_star), points - 1, dtype=torch.float64, device="cpu")
    return torch.cat([torch.zeros(1, dtype=torch.float64, device="cpu"), logs])


def likelihood_bound(denoise: Denoiser, tokens: torch.Tensor, keys: torch.Tensor, grid: torch.Tensor,
                     generator: torch.Generator, samples: int = 1) -> LikelihoodBound:
    """−log p(x) ≤ ½ ∫₀^{s*} mmse(s) ds + CE(x | z_{s*}), s* = grid[-1], every position at the same SNR.

    mmse(s) = E_ε Σ_i ‖K_{x_i} − x̂_i(z_s)‖², estimated with `samples` noise draws per grid point (one
    denoiser call on a batch of samples·b sequences) and integrated with the trapezoid rule over `grid`
    (increasing, starting at 0). The identity behind it (I-MMSE for this channel): with unit-norm keys,
    d/ds E[log p(x | z_s)] = ½ E‖K_x − x̂(z_s)‖² for the exact posterior, so the bound is tight for it up
    to quadrature and Monte Carlo error.
    """
    if grid.ndim != 1 or grid[0] != 0 or not torch.all(grid[1:] > grid[:-1]):
        raise ValueError("the SNR grid must be increasing and start at 0")
    b, seq_len = tokens.shape
    repeated = tokens.repeat(samples, 1)
    target = keys[repeated].double()
    mmse = []
    for s in grid.tolist():
        noise = torch.randn(samples * b, seq_len, keys.shape[1], generator=generator, dtype=torch.float64,
                            device=generator.device)
        snr = torch.full(repeated.shape, s, dtype=torch.float64, device=repeated.device)
        z = localize(keys, repeated, snr, noise.to(tokens.device))
        x_hat, nll = denoise(z, repeated)
        err = ((target - x_hat.double()) ** 2).sum(dim=(-1, -2))
        mmse.append(err.view(samples, b).mean(0))
    ce = nll.double().sum(-1).view(samples, b).mean(0)
    mmse = torch.stack(mmse)
    integral = 0.5 * torch.trapezoid(mmse, grid.to(mmse), dim=0)
    return LikelihoodBound(integral, ce, mmse)


def roar_bound(nll_given_clean: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: torch.Tensor,
               generator: torch.Generator, samples: int = 1) -> torch.Tensor:
    """The ROAR (any-order autoregressive) bound at the exact endpoints, per sequence [b], nats:

    −log p(x) ≤ E_σ Σ_k −log p_θ(x_{σ(k+1)} | x_{σ(1..k)}) = E_{k ~ U{0..L−1}, σ} [L/(L − k) Σ_{i ∉ σ(1..k)}
    −log p_θ(x_i | x_{σ(1..k)})], estimated with `samples` draws of (k, σ) per sequence.
    `nll_given_clean(tokens [n, L], clean [n, L] bool) → [n, L]` runs the model with the clean positions
    as their tokens (s = ∞) and the rest as [MASK] (s = 0), both on the embedding path; it is called
    once, on the samples·b sequences.
    """
    b, seq_len = tokens.shape
    repeated = tokens.repeat(samples, 1)
    k = torch.randint(0, seq_len, (samples * b,), generator=generator, device=generator.device)
    ranks = torch.stack([torch.randperm(seq_len, generator=generator, device=generator.device)
                         for _ in range(samples * b)])
    clean = ranks < k[:, None]  # the positions whose rank in a random order is below k
    nll = nll_given_clean(repeated, clean.to(tokens.device)).double().cpu()
    estimate = seq_len / (seq_len - k.double()) * (nll * (~clean)).sum(-1)
    return estimate.view(samples, b).mean(0)
