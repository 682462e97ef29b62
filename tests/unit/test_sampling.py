"""MDLM ancestral sampling (SPEC §5): exact step probabilities, nucleus, caching, seeding by index."""

from __future__ import annotations

import torch

from dsl_scale.sampling.generate import sample_mdlm
from dsl_scale.sampling.steps import gumbel_max, gumbel_noise, mdlm_step_probs, top_p_filter

MASK = 4


def test_mdlm_step_probabilities_follow_the_formula():
    x = torch.tensor([[MASK, 2, MASK]])
    x_theta = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.0]] * 3], dtype=torch.float64)
    t, s = 0.8, 0.5
    probs = mdlm_step_probs(x, x_theta, t, s, MASK)
    a_t, a_s = 1 - t, 1 - s
    expected_masked = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=torch.float64) * (a_s - a_t) / (1 - a_t)
    expected_masked[MASK] = (1 - a_s) / (1 - a_t)
    torch.testing.assert_close(probs[0, 0], expected_masked)
    torch.testing.assert_close(probs[0, 2], expected_masked)
    torch.testing.assert_close(probs[0, 1], torch.nn.functional.one_hot(torch.tensor(2), 5).double())
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 3, dtype=torch.float64))


def test_gumbel_max_draws_the_categorical():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64).expand(40_000, 4)
    draws = gumbel_max(probs, gumbel_noise((40_000, 4), torch.Generator().manual_seed(0)))
    freq = torch.bincount(draws, minlength=4).double() / 40_000
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.3, 0.15], dtype=torch.float64)
    kept = top_p_filter(probs, 0.75)
    torch.testing.assert_close(kept, torch.tensor([0.0, 0.5, 0.3, 0.0], dtype=torch.float64) / 0.8)
    torch.testing.assert_close(top_p_filter(probs, 1.0), probs)


class CountingDenoiser:
    """A fixed random 'model': logits depend on the input so caching must be exact to match."""

    def __init__(self, vocab: int):
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.table[z] + 0.1 * z.float().cumsum(-1)[..., None]


def test_caching_saves_evaluations_and_changes_nothing():
    cached = sample_mdlm(CountingDenoiser(6), [0, 1, 2], seq_len=4, steps=32, mask_id=5, seed=1)
    uncached = sample_mdlm(CountingDenoiser(6), [0, 1, 2], seq_len=4, steps=32, mask_id=5, seed=1, cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert all(n < 32 for n in cached.nfe) and uncached.nfe == [32, 32, 32]
    assert not (cached.tokens == 5).any(), "the final step unmasks everything"


def test_a_sample_depends_on_its_index_not_on_its_batch():
    together = sample_mdlm(CountingDenoiser(6), [0, 1, 2, 3], seq_len=5, steps=8, mask_id=5, seed=7)
    alone = sample_mdlm(CountingDenoiser(6), [2], seq_len=5, steps=8, mask_id=5, seed=7)
    assert torch.equal(together.tokens[2], alone.tokens[0])
