"""ReMDM remasking schedules (docs/method.md §5): σ within [0, σ_max], the spec's σ per schedule, loop phases."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.sampling.config import SamplerConfig
from dsl_scale.sampling.generate import sample, time_grid
from dsl_scale.sampling.schedules import SCHEDULES, loop_alpha
from dsl_scale.sampling.steps import sigma_max
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)

F64 = torch.float64


def state(seed: int = 0, n: int = 3, length: int = 16):
    gen = torch.Generator().manual_seed(seed)
    unmasked = torch.rand(n, length, generator=gen) < 0.6
    unmasked[0] = False  # one sequence with nothing unmasked yet
    psi = torch.where(unmasked, torch.rand(n, length, generator=gen, dtype=F64), torch.zeros((), dtype=F64))
    return psi, unmasked


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("eta", [0.0, 0.02, 0.5, 5.0])
def test_sigma_never_exceeds_sigma_max(name, eta):
    cfg = SamplerConfig(name=name, eta=eta)
    psi, unmasked = state()
    for steps in (4, 64, 300):
        grid = time_grid(steps)
        for t, s in zip(grid[:-1], grid[1:]):
            a_t, a_s, sigma = SCHEDULES[name](cfg, t, s, psi, unmasked)
            assert 0 <= a_t <= a_s < 1
            assert (sigma >= 0).all() and (sigma <= sigma_max(a_t, a_s) + 1e-15).all(), (t, s)


def test_each_schedule_gives_the_spec_sigma():
    psi, unmasked = state()
    t, s = 0.5, 0.49
    a_t, a_s = 0.5, 0.51
    smax = min(1.0, (1 - a_s) / a_t)
    cap = SCHEDULES["remdm_cap"](SamplerConfig(eta=0.008), t, s, psi, unmasked)
    assert cap[:2] == pytest.approx((a_t, a_s)) and torch.allclose(cap[2], torch.full_like(psi, min(0.008, smax)))
    rescale = SCHEDULES["remdm_rescale"](SamplerConfig(eta=0.015), t, s, psi, unmasked)
    assert torch.allclose(rescale[2], torch.full_like(psi, 0.015 * smax))
    conf = SCHEDULES["remdm_conf"](SamplerConfig(), t, s, psi, unmasked)[2]
    for row, (p, u) in enumerate(zip(psi, unmasked)):
        expected = torch.zeros_like(p)
        if u.any():
            expected[u] = torch.softmax(-p[u], dim=0) * smax
        torch.testing.assert_close(conf[row], expected, rtol=1e-12, atol=0)
    assert (SCHEDULES["mdlm"](SamplerConfig(), t, s, psi, unmasked)[2] == 0).all()


def test_loop_alpha_phases():
    cfg = SamplerConfig(name="remdm_loop", eta=0.02)
    assert loop_alpha(cfg, 1.0) == 0.0
    assert loop_alpha(cfg, 0.775) == pytest.approx(0.45)  # halfway through phase 1
    assert loop_alpha(cfg, 0.55) == loop_alpha(cfg, 0.3) == loop_alpha(cfg, 0.05) == 0.9
    assert loop_alpha(cfg, 0.025) == pytest.approx(0.95) and loop_alpha(cfg, 0.0) == pytest.approx(1.0)
    loop = SCHEDULES["remdm_loop"]
    psi, unmasked = state()
    assert (loop(cfg, 0.8, 0.79, psi, unmasked)[2] == 0).all()
    assert (loop(cfg, 0.3, 0.29, psi, unmasked)[2] == 0.02).all()
    assert (loop(cfg, 0.04, 0.03, psi, unmasked)[2] == 0).all()


def test_loop_holds_the_masked_fraction_near_one_minus_alpha_on():
    vocab, mask = 12, 11
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
    denoise = lambda z: table[z]  # a toy denoiser: x_θ depends on the current tokens
    cfg = SamplerConfig(name="remdm_loop", eta=0.02)
    fractions: list[tuple[float, float]] = []
    trace = lambda k, s, x: fractions.append((s, (x == mask).double().mean().item()))
    sample(denoise, [0, 1, 2], 128, 300, mask, seed=0, sampler=cfg, trace=trace)
    middle = [f for s, f in fractions if cfg.t_off < s <= cfg.t_on - 0.1]  # after a short burn-in
    assert len(middle) > 80
    mean = sum(middle) / len(middle)
    assert abs(mean - (1 - cfg.alpha_on)) < 0.025, mean
    assert all(abs(f - 0.1) < 0.08 for f in middle)
    assert fractions[-1][1] == 0.0
