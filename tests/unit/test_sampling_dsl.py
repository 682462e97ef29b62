"""DSL samplers (docs/method.md §5): exact-Bayes correctness, the Heun step by hand, NFE, batch invariance, the
hybrid's loop rules, and a micro DiT with a converter end to end."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.config import ModelConfig, ObjectiveConfig
from dsl_scale.diffusion.dsl import bayes_log_posterior, token_keys
from dsl_scale.model.factory import build_dit
from dsl_scale.sampling.config import SamplerConfig, validate_sample_config
from dsl_scale.sampling.continuous import heun_step, noise_std, sample_dsl_continuous, snr_points
from dsl_scale.sampling.denoiser import ModelDenoiser
from dsl_scale.sampling.hybrid import remask_draft, sample_dsl_hybrid
from dsl_scale.sampling.registry import check_model_fits, get_sampler, sampler_names
from dsl_scale.sampling.schedules import loop
from dsl_scale.sampling.steps import remdm_step_probs
from tests.unit.test_sampling import one_thread  # noqa: F401  (autouse)

MASK = 4
PRIOR = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=torch.float64)  # [MASK] never drawn


class BayesDenoiser:
    """The exact posterior of the channel under an i.i.d. prior per position; counts rows evaluated."""

    def __init__(self, dim: int = 8):
        self.keys = token_keys(len(PRIOR), dim, seed=1)
        self.log_posterior = bayes_log_posterior(self.keys, PRIOR.log())
        self.rows = 0

    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        self.rows += z.shape[0]
        return self.log_posterior(z).float()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        # Discrete path: a [MASK] position knows nothing but the prior; a token position knows itself.
        self.rows += ids.shape[0]
        known = torch.nn.functional.one_hot(ids, len(PRIOR)).double() * 30.0
        return torch.where((ids == MASK)[..., None], PRIOR.log().expand(*ids.shape, -1), known).float()


def continuous(**kw) -> SamplerConfig:
    return SamplerConfig(name="dsl_continuous", **kw)


def hybrid(**kw) -> SamplerConfig:
    return SamplerConfig(name="dsl_hybrid", **{"continuous_steps": 4, "draft_snr": 20.0, "eta": 0.1, **kw})


def test_exact_bayes_sde_draws_the_prior():
    """g = 1 with the exact posterior is the localization process itself: tokens ~ π (1,600 i.i.d. draws)."""
    result = sample_dsl_continuous(BayesDenoiser(), list(range(8)), 200, 48, MASK, seed=0, sampler=continuous(),
                                   top_p=1.0)
    freq = torch.bincount(result.tokens.flatten(), minlength=5).double() / result.tokens.numel()
    assert (freq - PRIOR).abs().max() < 0.04, freq  # 4σ at the largest binomial σ ≈ 0.012
    assert result.psi.min() > 0.99  # localised at s_max (continuous.snr_window: ≈ 40 for these keys)


def test_zero_noise_collapses_every_position_to_one_token():
    """docs/method.md §5's drift with g = 0 is deterministic from z = 0: documents why g defaults to 1."""
    tokens = sample_dsl_continuous(BayesDenoiser(), [0, 1], 16, 16, MASK, seed=0, sampler=continuous(noise_scale=0.0),
                                   top_p=1.0).tokens
    assert (tokens == tokens[0, 0]).all()


def test_heun_step_matches_a_hand_computation():
    # In z: x̂(z) = −z/2, z0 = 1, s 1 → 3, ξ = 0.3: f0 = −0.5, z̃ = 1 − 1 + 0.3 = 0.3, f1 = −0.15,
    # z = 1 + ½·2·(f0 + f1) + 0.3 = 0.65. The increment of g·W over [1, 4] with g = 2 has std 2·√3.
    z = heun_step(torch.ones(1), 1.0, 3.0, lambda v: -v / 2, torch.tensor([0.3]))
    torch.testing.assert_close(z, torch.tensor([0.65]))
    assert noise_std(1.0, 4.0, 2.0) == pytest.approx(2.0 * 3 ** 0.5)
    grid = snr_points(5, 0.01, 100.0)
    assert grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(100.0)
    assert grid[2] == pytest.approx(1.0)  # log-spaced
    assert snr_points(1, 0.01, 100.0) == [100.0]


def test_heun_step_is_second_order_on_the_noise_free_ode():
    """Keys ±1 in d = 1 with a uniform prior: x̂(z) = tanh(z), dz = tanh(z) ds. Halving the log-step cuts
    the error ~4×."""
    def solve(intervals: int) -> float:
        grid, z = snr_points(intervals + 1, 0.1, 10.0), torch.tensor([0.03], dtype=torch.float64)
        for s0, s1 in zip(grid, grid[1:]):
            z = heun_step(z, s0, s1, torch.tanh, torch.zeros(1, dtype=torch.float64))
        return float(z)

    exact = solve(4096)
    errors = [abs(solve(n) - exact) for n in (8, 16, 32)]
    assert 3.0 < errors[0] / errors[1] < 5.0 and 3.0 < errors[1] / errors[2] < 5.0, errors


def test_nfe_is_counted_per_sequence():
    denoise = BayesDenoiser()
    result = sample_dsl_continuous(denoise, [0, 1, 2], 8, 5, MASK, seed=0, sampler=continuous())
    assert result.nfe == [10, 10, 10] and denoise.rows == 30  # 1 + 2·4 Heun + 1 final argmax
    denoise = BayesDenoiser()
    result = sample_dsl_hybrid(denoise, [0, 1], 8, 10, MASK, seed=0, sampler=hybrid())
    # 2·4 continuous, then 6 random discrete steps and the noise-removal pass (cached where nothing changed)
    assert all(8 < n <= 8 + 7 for n in result.nfe) and denoise.rows == sum(result.nfe)


@pytest.mark.parametrize("name", ["dsl_continuous", "dsl_hybrid"])
def test_samples_do_not_depend_on_the_batch(name):
    cfg = continuous() if name == "dsl_continuous" else hybrid()
    run = lambda idx: get_sampler(name)(BayesDenoiser(), idx, 12, 8, MASK, 5, cfg, 0.9)  # noqa: E731
    together, alone = run([0, 1, 2, 3]), run([2])
    assert torch.equal(alone.tokens[0], together.tokens[2]) and alone.nfe[0] == together.nfe[2]
    assert not torch.equal(together.tokens[0], together.tokens[1])


def test_draft_keeps_its_most_confident_positions():
    draft = torch.tensor([[0, 1, 2, 3, 0]])
    psi = torch.tensor([[0.9, 0.2, 0.5, 0.2, 0.7]], dtype=torch.float64)
    x, kept_psi = remask_draft(draft, psi, 3, MASK)
    assert x.tolist() == [[0, MASK, 2, MASK, 0]]
    assert kept_psi.tolist() == [[0.9, 0.0, 0.5, 0.0, 0.7]]
    assert remask_draft(draft, psi, 4, MASK)[0].tolist() == [[0, 1, 2, MASK, 0]]  # tie: earlier kept


def test_hybrid_discrete_phase_obeys_the_loop_rules():
    """Every discrete transition has positive probability under the loop step at its (t, s); the draft
    is re-masked to the loop's α_on at t_on; remasking happens only in the loop's middle phase."""
    cfg, seq_len = hybrid(eta=0.3), 40
    states: list[tuple[int, float, torch.Tensor]] = []
    result = sample_dsl_hybrid(BayesDenoiser(), [0, 1], seq_len, 24, MASK, seed=2, sampler=cfg, top_p=1.0,
                               trace=lambda k, t, x: states.append((k, t, x.clone())))
    first = states[0]
    assert first[0] == -1 and first[1] == cfg.t_on
    assert ((first[2] == MASK).sum(-1) == seq_len - round(cfg.alpha_on * seq_len)).all()
    remasked_in_middle = 0
    for (_, t, before), (k, s, after) in zip(states, states[1:]):
        if k == len(states) - 2:  # the final argmax only fills masks
            assert torch.equal(after[before != MASK], before[before != MASK]) and not (after == MASK).any()
            continue
        a_t, a_s, sigma = loop(cfg, t, s, torch.zeros(before.shape, dtype=torch.float64), before != MASK)
        probs = remdm_step_probs(before, PRIOR.expand(*before.shape, -1), a_t, a_s, sigma, MASK)
        assert (probs.gather(-1, after[..., None]) > 0).all(), (t, s)
        newly_masked = int(((before != MASK) & (after == MASK)).sum())
        assert newly_masked == 0 or cfg.t_off < t <= cfg.t_on
        remasked_in_middle += newly_masked
    assert remasked_in_middle > 0 and not (result.tokens == MASK).any()


# --- a real micro DiT with DSL's converter -----------------------------------------------------------

VOCAB, DIT_MASK = 64, 63


def micro_dit(dsl: bool = True):
    cfg = ModelConfig(name="micro", hidden=32, n_blocks=2, n_heads=2, cond_dim=16, seq_len=16)
    objective = ObjectiveConfig(name="dsl", key_dim=8) if dsl else None
    model = build_dit(cfg, VOCAB, seed=0, objective=objective, mask_id=DIT_MASK)
    with torch.no_grad():  # the zero-initialised output layer would make x_θ uniform
        model.output_layer.linear.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return model


@pytest.mark.parametrize("name", ["dsl_continuous", "dsl_hybrid"])
def test_micro_dit_samples_end_to_end(process_group, name):
    denoise = ModelDenoiser(micro_dit())
    cfg = SamplerConfig(name=name, continuous_steps=3, eta=0.1)
    run = lambda idx: get_sampler(name)(denoise, idx, 16, 6, DIT_MASK, 4, cfg, 0.9)  # noqa: E731
    together, alone = run([0, 1, 2]), run([1])
    assert together.tokens.shape == (3, 16) and not (together.tokens == DIT_MASK).any()
    assert torch.equal(alone.tokens[0], together.tokens[1]) and alone.nfe[0] == together.nfe[1]
    assert together.nfe == [12] * 3 if name == "dsl_continuous" else all(6 < n <= 10 for n in together.nfe)


def test_dsl_samplers_refuse_a_checkpoint_without_converter(process_group):
    model = micro_dit(dsl=False)
    with pytest.raises(ValueError, match="runs/mdlm-small"):
        check_model_fits("dsl_hybrid", model, "runs/mdlm-small")
    check_model_fits("remdm_loop", model, "runs/mdlm-small")
    with pytest.raises(ValueError, match="DSL checkpoint"):
        sample_dsl_continuous(ModelDenoiser(model), [0], 16, 2, DIT_MASK, 0)


def test_dsl_sampler_configs_compose_and_validate():
    from tests.unit.test_sampling_config import composed

    cont = composed("sampler=dsl_continuous").sampler
    # the SNR grid's bounds default to the keys' own window (continuous.snr_window)
    assert (cont.name, cont.noise_scale, cont.s_min, cont.s_max) == ("dsl_continuous", 1.0, None, None)
    hyb = composed("sampler=dsl_hybrid", "steps=32")
    assert (hyb.sampler.continuous_steps, hyb.sampler.draft_snr, hyb.sampler.eta) == (8, 20.0, 0.02)
    validate_sample_config(hyb, sampler_names())
    with pytest.raises(ValueError, match="continuous_steps"):
        validate_sample_config(composed("sampler=dsl_hybrid", "steps=8"), sampler_names())
    with pytest.raises(ValueError, match="noise_scale"):
        validate_sample_config(composed("sampler=dsl_continuous", "sampler.noise_scale=-1"), sampler_names())
