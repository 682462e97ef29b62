"""DSL's pure tensor parts (docs/method.md §4): keys, channel, SNR mixture, loss, likelihood bounds."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from dsl_scale.core import counter_rng
from dsl_scale.diffusion import dsl

MASK = 50


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_token_keys_are_unit_norm_seeded_and_pinned():
    keys = dsl.token_keys(1000, 48, 0)
    assert keys.shape == (1000, 48) and keys.dtype == torch.float32
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(1000))
    assert torch.equal(keys, dsl.token_keys(1000, 48, 0))
    assert not torch.allclose(keys, dsl.token_keys(1000, 48, 1))
    # a prefix of the vocabulary keeps its keys; the values are pinned (NumPy's frozen legacy stream)
    assert torch.equal(dsl.token_keys(50258, 48, 0)[:1000], keys)
    expected = torch.tensor([-0.22883595526218414, -0.022161787375807762, 0.004783280193805695,
                             -0.05035189911723137])
    torch.testing.assert_close(keys[0, :4], expected, rtol=0, atol=1e-7)


def test_localize_is_the_gaussian_channel_and_discrete_positions_take_the_table():
    keys = dsl.token_keys(MASK + 1, 8, 3)
    tokens = torch.tensor([[4, 9, 17, 2]])
    snr = torch.tensor([[0.0, 2.5, math.inf, 100.0]], dtype=torch.float64)
    noise = torch.randn(1, 4, 8, generator=gen(0))
    z = dsl.localize(keys, tokens, snr, noise)
    assert torch.equal(z[0, 0], torch.zeros(8)), "s = 0 is the [MASK] endpoint: z = 0"
    assert torch.equal(z[0, 2], torch.zeros(8)), "s = inf is discrete: no z"
    torch.testing.assert_close(z[0, 1], 2.5 * keys[9] + math.sqrt(2.5) * noise[0, 1])
    torch.testing.assert_close(z[0, 3], 100 * keys[2] + 10 * noise[0, 3])
    assert dsl.discrete_ids(tokens, snr, MASK).tolist() == [[MASK, MASK, 17, MASK]]


def draws(schedule: dsl.SNRSchedule, n: int, seq_len: int) -> dsl.SNRDraw:
    return dsl.draw_snr(seq_len, schedule, counter_rng.key((7, torch.arange(n)), "cpu"))


def test_roar_draws_have_uniform_k_and_the_stated_ranges():
    n, seq_len, s_max = 8000, 16, 100.0
    out = draws(dsl.SNRSchedule(p_roar=1.0), n, seq_len)
    assert torch.all(out.kind == dsl.ROAR) and not out.discrete.any()
    snr, k = out.snr, out.num_clean
    clean = snr >= 0.8 * s_max
    assert torch.equal(clean.sum(1), k), "exactly k clean positions"
    assert snr[clean].max() <= s_max and snr[~clean].min() >= 0 and snr[~clean].max() < 1
    counts = torch.bincount(k, minlength=seq_len).double()
    assert counts.numel() == seq_len, "k ranges over 0..L-1"
    chi2 = ((counts - n / seq_len) ** 2 / (n / seq_len)).sum().item()
    assert chi2 < 37.7, f"k is not uniform (chi2 = {chi2:.1f}, 15 dof, p = 0.001)"
    # uniform within each range, and the random order spreads clean positions evenly
    assert abs(snr[clean].mean().item() - 0.9 * s_max) < 0.2
    assert abs(snr[~clean].mean().item() - 0.5) < 0.01
    rate = clean.double().mean(0)
    assert torch.all((rate - (seq_len - 1) / 2 / seq_len).abs() < 0.03)
    # given k, every set of k positions is equally likely: the clean positions of k = 1 rows are uniform
    first = clean[k == 1].double().argmax(1)
    counts = torch.bincount(first, minlength=seq_len).double()
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum().item()
    assert chi2 < 37.7, f"the single clean position is not uniform (chi2 = {chi2:.1f})"


def test_lognormal_draws_match_mean_and_std_of_log_snr_and_clamp():
    out = draws(dsl.SNRSchedule(p_roar=0.0, s_clamp=1e30), 1000, 64)
    log_s = out.snr.log()
    assert torch.all(out.kind == dsl.LOGNORMAL) and torch.all(out.num_clean == -1)
    assert abs(log_s.mean().item() - 1.69) < 0.01 and abs(log_s.std().item() - 0.9) < 0.01
    snr = draws(dsl.SNRSchedule(p_roar=0.0), 1000, 64).snr
    assert snr.max() == 40.0
    clamped = (snr == 40.0).double().mean().item()
    expected = 0.5 * math.erfc((math.log(40) - 1.69) / 0.9 / math.sqrt(2))  # P(log s > log 40)
    assert abs(clamped - expected) < 0.003


def test_mixture_weights_and_exact_mdlm_sequences():
    out = draws(dsl.SNRSchedule(p_roar=0.1, mdlm_fraction=0.3), 6000, 8)
    assert abs((out.kind == dsl.MDLM).double().mean().item() - 0.3) < 0.02
    assert abs((out.kind == dsl.ROAR).double().mean().item() - 0.07) < 0.01
    is_mdlm = out.kind == dsl.MDLM
    snr = out.snr[is_mdlm]
    assert torch.equal(out.discrete, is_mdlm[:, None].expand(-1, 8))
    assert torch.all((snr == 0) | torch.isinf(snr))
    # t ~ U[0, 1): the mask rate averages (1 − ε)/2
    assert abs((snr == 0).double().mean().item() - 0.4995) < 0.02


def test_corrupt_is_a_function_of_the_key_words_only():
    keys = dsl.token_keys(MASK + 1, 8, 0)
    tokens = torch.randint(0, MASK, (3, 10), generator=gen(0))
    schedule = dsl.SNRSchedule(mdlm_fraction=0.5)
    a = dsl.corrupt(tokens, keys, schedule, MASK, (5, torch.arange(3)))
    b = dsl.corrupt(tokens, keys, schedule, MASK, (5, torch.arange(3)))
    c = dsl.corrupt(tokens, keys, schedule, MASK, (6, torch.arange(3)))
    assert torch.equal(a.z, b.z) and torch.equal(a.snr, b.snr) and torch.equal(a.ids, b.ids)
    assert not torch.equal(a.z, c.z)
    # a sequence's draw does not depend on its neighbours in the batch
    single = dsl.corrupt(tokens[1:2], keys, schedule, MASK, (5, torch.tensor([1])))
    assert torch.equal(single.z[0], a.z[1]) and torch.equal(single.snr[0], a.snr[1])
    # the channel noise is standard normal: z = s·K_x + √s·ε at the continuous positions
    big = torch.randint(0, MASK, (64, 32), generator=gen(1))
    out = dsl.corrupt(big, keys, dsl.SNRSchedule(p_roar=0.0), MASK, (5, torch.arange(64)))
    s = out.snr.float()[..., None]
    noise = (out.z - s * keys[big]) / s.sqrt()
    n = noise.numel()
    assert abs(noise.mean().item()) < 4 / math.sqrt(n) and abs(noise.var().item() - 1) < 4 * math.sqrt(2 / n)
    with pytest.raises(ValueError, match="one entry per sequence"):
        dsl.corrupt(tokens, keys, schedule, MASK, (5, torch.arange(2)))
    with pytest.raises(ValueError, match="one entry per sequence"):
        dsl.corrupt(tokens, keys, schedule, MASK, (5,))


def test_dsl_loss_is_the_unweighted_mean_over_all_positions():
    nll = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert dsl.dsl_loss(nll).item() == 3.0


def toy_prior(vocab: int, seed: int) -> torch.Tensor:
    return torch.log_softmax(torch.randn(vocab, generator=gen(seed), dtype=torch.float64) * 1.5, -1)


def test_likelihood_bound_with_the_exact_posterior_equals_minus_log_prior():
    """I-MMSE: ½∫₀^∞ mmse + CE(s*) = −log π_x exactly for the Bayes posterior (up to MC/quadrature)."""
    vocab, dim = 6, 4
    keys = dsl.token_keys(vocab, dim, 7)
    tokens = torch.tensor([[0, 3, 5], [1, 2, 4]])
    grid = dsl.snr_grid(s_star=400.0, points=96)
    for prior_seed in (0, 1):
        log_prior = toy_prior(vocab, prior_seed)
        exact = -log_prior[tokens].sum(-1)
        denoise = dsl.denoiser_from_log_probs(dsl.bayes_log_posterior(keys, log_prior), keys)
        bound = dsl.likelihood_bound(denoise, tokens, keys, grid, gen(prior_seed), samples=200)
        torch.testing.assert_close(bound.total, exact, rtol=0.03, atol=0.05)
        assert torch.all(bound.ce < 0.05), "nothing left to pay at s* = 400"
        # s* = 0: the bound is the CE of the prior alone
        only_ce = dsl.likelihood_bound(denoise, tokens, keys, torch.zeros(1, dtype=torch.float64), gen(0))
        torch.testing.assert_close(only_ce.total, exact)


def test_likelihood_bound_rejects_bad_grids():
    with pytest.raises(ValueError, match="grid"):
        dsl.likelihood_bound(lambda z, x: (z, z[..., 0]), torch.zeros(1, 2, dtype=torch.long),
                             dsl.token_keys(3, 2, 0), torch.tensor([1.0, 2.0]), gen(0))


def test_roar_bound_with_exact_conditionals_equals_minus_log_p():
    """For a toy joint over L = 3, V = 3 the any-order chain rule makes the ROAR bound exact in expectation."""
    vocab, seq_len = 3, 3
    logits = torch.randn(vocab**seq_len, generator=gen(4), dtype=torch.float64) * 2
    joint = torch.softmax(logits, 0).view([vocab] * seq_len)
    tokens = torch.tensor([[0, 1, 2], [2, 2, 0], [1, 0, 1]])

    def nll_given_clean(rows: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(clean.shape, dtype=torch.float64)
        for row, (x, c) in enumerate(zip(rows.tolist(), clean.tolist())):
            consistent = [y for y in itertools.product(range(vocab), repeat=seq_len)
                          if all(y[j] == x[j] for j in range(seq_len) if c[j])]
            evidence = sum(joint[y] for y in consistent)
            for i in range(seq_len):
                if not c[i]:
                    out[row, i] = -torch.log(sum(joint[y] for y in consistent if y[i] == x[i]) / evidence)
        return out

    bound = dsl.roar_bound(nll_given_clean, tokens, gen(0), samples=1500)
    exact = -torch.stack([joint[tuple(x)] for x in tokens.tolist()]).log()
    torch.testing.assert_close(bound, exact, rtol=0.04, atol=0.03)


def test_schedule_reads_the_objective_config_and_validates():
    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "objective" / "dsl.yaml")
    schedule = dsl.SNRSchedule.from_config(node)
    assert schedule == dsl.SNRSchedule(), "configs/objective/dsl.yaml holds docs/method.md §4's defaults"
    schedule.validate()
    with pytest.raises(ValueError, match="p_roar"):
        dsl.SNRSchedule(p_roar=1.5).validate()
