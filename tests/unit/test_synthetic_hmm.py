"""The synthetic-hmm source: its parameters from the source name, data as a pure function of (seed, index),
shards written like any other source, and the exact forward-algorithm likelihood."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dsl_scale.data.loader import open_shards
from dsl_scale.data.prepare import prepare
from dsl_scale.data.synthetic_hmm import HMM, HMMSpec, build_hmm, hmm_from_source, parse_source
from dsl_scale.evaluation.hmm_likelihood import hmm_quality, log_likelihood, per_token_nll
from dsl_scale.tokenizer import get_tokenizer


def tiny_hmm() -> HMM:
    return build_hmm(HMMSpec(states=3, symbols=4, succ=2, seed=7))


def brute_force_log_p(hmm: HMM, x: tuple[int, ...]) -> float:
    """Σ over every state path of π(s1)·E(s1, x1)·Π T(s_{t−1}, s_t)·E(s_t, x_t)."""
    total = 0.0
    for path in itertools.product(range(hmm.states), repeat=len(x)):
        p = hmm.initial[path[0]] * hmm.emissions[path[0], x[0]]
        for t in range(1, len(x)):
            p *= hmm.transitions[path[t - 1], path[t]] * hmm.emissions[path[t], x[t]]
        total += p
    return math.log(total) if total > 0 else -math.inf


def test_forward_algorithm_matches_enumeration_on_a_tiny_hmm():
    hmm = tiny_hmm()
    assert (hmm.transitions > 0).sum(axis=1).tolist() == [2, 2, 2]  # sparse: two successors each
    everything = list(itertools.product(range(4), repeat=5))
    got = log_likelihood(hmm, torch.tensor(everything, device="cpu")).numpy()
    want = np.array([brute_force_log_p(hmm, x) for x in everything])
    finite = np.isfinite(want)
    assert (np.isfinite(got) == finite).all()
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=1e-12)
    assert abs(np.exp(got[finite]).sum() - 1.0) < 1e-12  # a distribution over all 4^5 sequences


def test_unobserved_positions_are_marginalised():
    hmm = tiny_hmm()
    x = torch.tensor([[0, 1, 2, 3, 1]], device="cpu")
    observed = torch.ones_like(x, dtype=torch.bool)
    observed[0, 2] = False
    alternatives = x.repeat(4, 1)
    alternatives[:, 2] = torch.arange(4, device="cpu")
    want = torch.logsumexp(log_likelihood(hmm, alternatives), dim=0)
    torch.testing.assert_close(log_likelihood(hmm, x, observed)[0], want, rtol=0, atol=1e-12)


def test_true_samples_score_the_exact_entropy_and_shuffled_ones_much_worse():
    hmm = tiny_hmm()
    everything = list(itertools.product(range(4), repeat=5))
    log_p = log_likelihood(hmm, torch.tensor(everything, device="cpu")).numpy()
    entropy = -np.sum(np.exp(log_p[np.isfinite(log_p)]) * log_p[np.isfinite(log_p)]) / 5
    nll = per_token_nll(hmm, hmm.sample(range(4000), 5).tolist())
    assert abs(nll.mean() - entropy) < 4 * nll.std() / math.sqrt(len(nll))

    big = hmm_from_source("synthetic-hmm")  # the default 64 × 64 source at L = 128
    true = big.sample(range(300), 126)
    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(row) for row in true])
    lower, upper = big.entropy_bounds(126)
    true_nll, shuffled_nll = per_token_nll(big, true.tolist()), per_token_nll(big, shuffled.tolist())
    margin = 4 * true_nll.std() / math.sqrt(len(true_nll))  # Monte Carlo error of the mean
    assert lower < true_nll.mean() < upper + margin, (lower, true_nll.mean(), upper)
    assert np.isfinite(shuffled_nll).mean() < 0.05 or shuffled_nll.mean() > true_nll.mean() + 1.0


def test_data_is_a_pure_function_of_seed_and_index():
    hmm = hmm_from_source("synthetic-hmm-seed3")
    together = hmm.sample([5, 9, 11], 40)
    assert (hmm.sample([11], 40)[0] == together[2]).all()
    assert (hmm.sample([9, 5], 40) == together[[1, 0]]).all()
    again = hmm_from_source("synthetic-hmm-seed3")
    assert (again.transitions == hmm.transitions).all() and (again.sample([5], 40) == together[:1]).all()
    other = hmm_from_source("synthetic-hmm-seed4")
    assert not (other.emissions == hmm.emissions).all()
    assert (hmm.sample([5], 40) != hmm.sample([6], 40)).any()


def test_source_names_carry_the_parameters():
    spec = parse_source("synthetic-hmm-states32-symbols16-seed2-n100")
    assert spec == HMMSpec(states=32, symbols=16, succ=4, seed=2, n=100)
    assert parse_source(spec.source) == spec and HMMSpec().source == "synthetic-hmm"
    for bad in ("synthetic-hmm-colors3", "synthetic-hmm-states", "synthetic-hmm-succ9-states4"):
        with pytest.raises(ValueError, match="synthetic-hmm"):
            parse_source(bad)


def test_prepared_shards_hold_one_sequence_per_block(tmp_path):
    source = "synthetic-hmm-states8-symbols6-seed1-n40"
    with pytest.raises(ValueError, match="needs tokenizer 'synthetic-6'"):
        prepare(source, str(tmp_path / "bad"), 16, tokenizer="char", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before any work
    tok = get_tokenizer("synthetic-6")
    manifest = prepare(source, str(tmp_path / "d"), 16, tokenizer="synthetic-6", progress=False, docs_per_group=7)
    assert manifest["splits"]["train"]["blocks"] == 38 and manifest["splits"]["val"]["blocks"] == 2
    blocks = np.stack([np.asarray(b) for b in (lambda s: [s[i] for i in range(len(s))])(
        open_shards(str(tmp_path / "d"), "val"))])
    want = hmm_from_source(source).sample([38, 39], 14)
    assert (blocks[:, 0] == tok.bos_id).all() and (blocks[:, -1] == tok.eos_id).all()
    assert (blocks[:, 1:-1] == want).all()
    assert tok.encode(tok.decode(want[0])) == want[0].tolist()


def test_quality_report_counts_invalid_samples():
    source = "synthetic-hmm-states8-symbols6-seed1"
    tok = get_tokenizer("synthetic-6")
    good = [[tok.bos_id, *row, tok.eos_id] for row in hmm_from_source(source).sample(range(20), 10).tolist()]
    bad = [tok.bos_id, 0, tok.mask_id, 1, tok.eos_id]
    result = hmm_quality(source, [*good, bad], tok.bos_id, tok.eos_id, resamples=200)
    assert (result["count"], result["invalid"], result["scored"]) == (21, 1, 20)
    lo, hi = result["ci95"]
    assert lo <= result["nll_per_token"] <= hi
