"""DSL continuous path against an exact Bayes denoiser over 29 symbols (docs/method.md §5).

With the exact posterior p(v | z) ∝ π_v·exp(⟨z, K_v⟩ − s‖K_v‖²/2) (unit keys: the s term is a constant)
and g = 1, the sampled z_s has the channel's law: z_s − s·K_x is Brownian, variance s per dimension,
whatever the step count. The old sampler (Heun in y = z/s, ∫ g/s dW added to both stages) measured
484 / 3.5 / 1.37 at T = 8 / 16 / 32 on the hybrid's grid.
"""

from __future__ import annotations

import math

import pytest
import torch

from dsl_scale.diffusion.dsl import bayes_log_posterior, token_keys
from dsl_scale.sampling.config import SamplerConfig
from dsl_scale.sampling.continuous import Localizer, localize_path, sample_dsl_continuous, snr_points
from dsl_scale.sampling.generate import sample_generators
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)

SYMBOLS, DIM = 29, 48
MASK = SYMBOLS  # the last id; its prior is 0 and its logit suppressed
# A non-uniform prior over the 29 symbols, so that drawing π tests the drift as well as the noise.
PRIOR = torch.cat([torch.softmax(torch.linspace(-1.5, 1.5, SYMBOLS, dtype=torch.float64), 0),
                   torch.zeros(1, dtype=torch.float64)])
WINDOW = (0.5, 32.0)  # continuous.snr_window for 29 symbols in d = 48 (checked below)


class ExactBayes:
    """The closed-form posterior of the localization channel under the i.i.d. prior PRIOR; no model."""

    def __init__(self):
        self.keys = token_keys(SYMBOLS + 1, DIM, seed=3)
        self.log_posterior = bayes_log_posterior(self.keys, PRIOR.log())

    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_posterior(z)


def residual_variance(steps: int, s_min: float, s_max: float, sequences: int = 4, length: int = 400) -> float:
    """var(z_s − s·K_x)/s per dimension over sequences × length positions, x the token z_s decodes to."""
    denoise = ExactBayes()
    loc = Localizer(denoise, MASK, 1.0)
    grid = snr_points(steps, s_min, s_max)
    z = localize_path(loc, length, grid, 1.0, sample_generators(11, list(range(sequences))))
    tokens = denoise.from_z(z).argmax(-1)
    residual = z - grid[-1] * denoise.keys.double()[tokens]
    return float(residual.pow(2).mean() / grid[-1])


@pytest.mark.parametrize("steps", [8, 16, 32, 64])
@pytest.mark.parametrize("window", [WINDOW, (WINDOW[0], 20.0), (0.01, 20.0), (0.01, 100.0)],
                         ids=["continuous", "hybrid", "old-hybrid", "old-continuous"])
def test_residual_variance_is_one_per_dimension(steps, window):
    """continuous: the default grid for this vocabulary; hybrid: its continuous part up to draft_snr = 20;
    old-*: the former log grids from 0.01 (the issue's measurements were on old-hybrid). Any grid must
    give 1. 4 × 400 positions × 48 dims: the estimate's std is ≈ 0.005."""
    variance = residual_variance(steps, *window)
    assert abs(variance - 1.0) < 0.05, variance


def test_the_default_window_fits_the_vocabulary():
    from dsl_scale.sampling.continuous import snr_window

    s_lo, s_hi = snr_window(ExactBayes().keys, MASK)
    assert s_lo == pytest.approx(0.5, rel=1e-5)
    assert WINDOW[1] - 2 < s_hi < WINDOW[1] + 2
    # 50,257 GPT-2 tokens in the same 48 dimensions: keys crowd, the posterior settles later
    assert 90 < snr_window(token_keys(50_258, DIM, seed=0), 50_257)[1] < 130


@pytest.mark.parametrize("steps", [8, 32])
def test_default_continuous_sampler_draws_the_prior(steps):
    """The sampler with its defaults (grid from the keys, g = 1): tokens ~ π. 4,800 draws: the largest
    binomial std is ≈ 0.0025 per symbol, so a 0.012 bound is ≈ 5σ (the old log grid from 0.01 put too
    little time where the posterior moves: 0.011 off at T = 8 with 20,000 draws)."""
    result = sample_dsl_continuous(ExactBayes(), list(range(12)), 400, steps, MASK, seed=2,
                                   sampler=SamplerConfig(name="dsl_continuous"), top_p=1.0)
    freq = torch.bincount(result.tokens.flatten(), minlength=SYMBOLS + 1).double() / result.tokens.numel()
    assert (freq - PRIOR).abs().max() < 0.012, (freq - PRIOR).abs().max()
    assert math.isclose(float(freq.sum()), 1.0) and result.nfe == [2 * steps] * 12
