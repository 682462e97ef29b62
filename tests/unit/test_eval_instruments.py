"""The comparison's instruments against brute force on tiny cases: the HMM's exact pooled n-gram marginals (by
enumerating every sequence of a 3-state HMM), the TV distance, the ε-smoothed NLL, in-sampler self-correction,
and the Kneser–Ney scorer on a hand-worked text."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dsl_scale.data.synthetic_hmm import HMM, hmm_from_source
from dsl_scale.evaluation.diversity import diversity
from dsl_scale.evaluation.hmm_marginals import (
    eps_nll,
    in_sampler_self_correction,
    ngram_tv,
    pooled_ngram_marginal,
    sequence_log_likelihood,
    smoothed_hmm,
)
from dsl_scale.evaluation.kneser_ney import KneserNey, perplexity_of

BOS, EOS = 5, 5  # the synthetic tokenizer's convention: specials after the symbols


def tiny_hmm() -> HMM:
    """3 states, 2 symbols, a non-uniform start and a sparse transition (state 2 never follows state 0)."""
    return HMM(np.array([0.5, 0.3, 0.2]),
               np.array([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]),
               np.array([[0.9, 0.1], [0.3, 0.7], [0.05, 0.95]]), seed=0)


def brute_probability(hmm: HMM, x: tuple[int, ...]) -> float:
    total = 0.0
    for path in itertools.product(range(hmm.states), repeat=len(x)):
        p = hmm.initial[path[0]] * hmm.emissions[path[0], x[0]]
        for a, b, v in zip(path, path[1:], x[1:]):
            p *= hmm.transitions[a, b] * hmm.emissions[b, v]
        total += p
    return total


@pytest.mark.parametrize("n", [1, 2, 3])
def test_pooled_ngram_marginal_is_the_enumerated_one(n):
    hmm, m = tiny_hmm(), 5
    expected = np.zeros((hmm.symbols,) * n)
    for x in itertools.product(range(hmm.symbols), repeat=m):
        p = brute_probability(hmm, x)
        for t in range(m - n + 1):
            expected[x[t:t + n]] += p / (m - n + 1)
    assert np.allclose(pooled_ngram_marginal(hmm, m, n), expected, atol=1e-14)
    assert math.isclose(expected.sum(), 1.0)


def test_tv_distance_by_hand_and_floor():
    hmm = tiny_hmm()
    framed = lambda s: [BOS, *s, EOS]  # noqa: E731
    # Two samples of 3 symbols: bigrams (0,0),(0,1),(1,1),(1,1): f̂ = ¼, ¼, ½ on (0,0), (0,1), (1,1).
    result = ngram_tv(hmm, [framed([0, 0, 1]), framed([1, 1, 1])], BOS, EOS, orders=(2,))
    p = pooled_ngram_marginal(hmm, 3, 2)
    f = np.array([[0.25, 0.25], [0.0, 0.5]])
    assert math.isclose(result["tv_2"]["tv"], 0.5 * np.abs(f - p).sum(), rel_tol=1e-12)
    # A non-symbol inside a window is mass where the source has none: TV 1 for a sample made of them.
    assert ngram_tv(hmm, [framed([4, 4, 4])], BOS, EOS, orders=(2,))["tv_2"]["tv"] == pytest.approx(1.0)
    # The source's own sequences approach 0 with their number (the finite-sample floor shrinks).
    source = hmm_from_source("synthetic-hmm-states8-symbols6-succ2")
    draws = source.sample(range(2000), 20).tolist()
    few = ngram_tv(source, [[6, *s, 6] for s in draws[:50]], 6, 6, resamples=20)
    many = ngram_tv(source, [[6, *s, 6] for s in draws], 6, 6, resamples=20)
    assert many["tv_2"]["tv"] < few["tv_2"]["tv"] and many["tv_3"]["tv"] < few["tv_3"]["tv"]
    low, high = few["tv_2"]["ci95"]
    assert low <= few["tv_2"]["tv"] <= high


def test_eps_nll_counts_invalid_samples_and_tends_to_the_exact_nll():
    hmm = tiny_hmm()
    valid, invalid = [BOS, 0, 1, 1, EOS], [BOS, 0, 4, 1, EOS]
    exact = -math.log(brute_probability(hmm, (0, 1, 1))) / 3
    assert eps_nll(hmm, [valid], BOS, EOS, vocab_size=6, eps=1e-9)["eps_nll"] == pytest.approx(exact, rel=1e-6)
    both = eps_nll(hmm, [valid, invalid], BOS, EOS, vocab_size=6, eps=1e-3)
    assert both["count"] == 2 and both["invalid"] == 1 and math.isfinite(both["eps_nll"])
    # by brute force under the smoothed chain
    smooth = smoothed_hmm(hmm, 6, 1e-3)
    expected = np.mean([-math.log(brute_probability(smooth, (0, 1, 1))) / 3,
                        -math.log(brute_probability(smooth, (0, 4, 1))) / 3])
    assert both["eps_nll"] == pytest.approx(expected, rel=1e-10)
    assert np.allclose(sequence_log_likelihood(smooth, [[0, 4, 1]]), math.log(brute_probability(smooth, (0, 4, 1))))


def test_in_sampler_self_correction_by_hand():
    hmm = tiny_hmm()
    smooth = smoothed_hmm(hmm, 6)
    final = [BOS, 0, 1, 1, EOS]
    # remasks: position 2 had 0 (final 1), position 3 had 1 (unchanged), position 0 is the frame
    events = [[3, 2, 0], [5, 3, 1], [1, 0, BOS]]
    result = in_sampler_self_correction(hmm, [final], [events], BOS, EOS, vocab_size=6)
    better = brute_probability(smooth, (0, 1, 1)) > brute_probability(smooth, (0, 0, 1))
    assert (result["judged"], result["frame"], result["changed"]) == (2, 1, 1)
    assert result["improved"] == int(better) and result["improved_fraction"] == int(better) / 2


def test_kneser_ney_on_a_hand_worked_text():
    """Order 2, D = 0.5, the text 'abab' as ids a=0 b=1 (c=2 never seen), BOS=3, [MASK]=4 excluded: bigrams
    (BOS,a) (a,b) (b,a) (a,b); continuation counts N1+(•a) = |{BOS, b}| = 2, N1+(•b) = |{a}| = 1, N1+(••) = 3;
    uniform over the 4 predictable ids.
    P0(a) = (2 − ½)/3 + ½·2/3·¼ = 7/12, P0(b) = (1 − ½)/3 + 1/12 = 1/4, P0(c) = P0(BOS) = 1/12;
    P(b|a) = (2 − ½)/2 + ½·1/2·P0(b) = 13/16, P(a|a) = ¼·P0(a) = 7/48, P(a|b) = ½ + ½·P0(a) = 19/24;
    an unseen context backs off: P(a|c) = P0(a)."""
    model = KneserNey(2, vocab_size=5, excluded=(4,), discounts=[0.5, 0.5]).fit([[3, 0, 1, 0, 1]])
    assert model.distribution([]).tolist() == pytest.approx([7 / 12, 1 / 4, 1 / 12, 1 / 12, 0.0])
    assert model.distribution([0])[[0, 1]].tolist() == pytest.approx([7 / 48, 13 / 16])
    assert model.distribution([1])[0] == pytest.approx(19 / 24)
    assert model.distribution([2])[0] == pytest.approx(7 / 12)
    for h in ([0], [1], [2], [3]):
        assert model.distribution(h).sum() == pytest.approx(1.0) and model.distribution(h)[4] == 0
    ppl = perplexity_of(model, [3, 0, 1])
    assert ppl == pytest.approx(math.exp(-(math.log(model.distribution([3])[0]) + math.log(13 / 16)) / 2))


def test_kneser_ney_higher_orders_normalise_and_prefer_seen_text():
    rng = np.random.default_rng(0)
    text = [[3] + rng.choice(3, 30, p=[0.6, 0.3, 0.1]).tolist() for _ in range(40)]
    model = KneserNey(4, vocab_size=5, excluded=(4,)).fit(text)
    assert 0 < model.discounts[-1] < 1
    for h in ([3, 0, 1], [2, 2, 2], [0]):
        assert model.distribution(h).sum() == pytest.approx(1.0)
    assert perplexity_of(model, text[0]) < perplexity_of(model, [3] + [2] * 30)


def test_diversity_reports_distinct_n_with_an_interval():
    samples = [[1, 2, 3, 4], [1, 2, 3, 5], [6, 7, 8, 9]]
    d = diversity(samples, resamples=50, seed=0)
    assert d["distinct_1"] == pytest.approx(9 / 12) and d["distinct_4"] == 1.0
    assert d["ci95"]["distinct_2"][0] <= d["distinct_2"] <= d["ci95"]["distinct_2"][1]
