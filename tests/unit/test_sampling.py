"""MDLM / ReMDM sampling (docs/method.md §5): exact step probabilities, nucleus, two-stage draws, caching, seeding."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.sampling.config import SamplerConfig
from dsl_scale.sampling.generate import _step_one, sample
from dsl_scale.sampling.steps import (
    gumbel_max,
    gumbel_noise,
    mdlm_step_probs,
    nucleus_rows,
    remdm_step_probs,
    top_p_filter,
    transition_groups,
)

MASK = 4
SAMPLERS = ["mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_loop", "remdm_confidence"]
F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: a second OpenMP thread only adds synchronisation (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mdlm_step_probabilities_follow_the_formula():
    x = torch.tensor([[MASK, 2, MASK]])
    x_theta = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.0]] * 3], dtype=F64)
    t, s = 0.8, 0.5
    probs = mdlm_step_probs(x, x_theta, t, s, MASK)
    a_t, a_s = 1 - t, 1 - s
    expected_masked = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=F64) * (a_s - a_t) / (1 - a_t)
    expected_masked[MASK] = (1 - a_s) / (1 - a_t)
    torch.testing.assert_close(probs[0, 0], expected_masked)
    torch.testing.assert_close(probs[0, 2], expected_masked)
    torch.testing.assert_close(probs[0, 1], torch.nn.functional.one_hot(torch.tensor(2), 5).double())
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 3, dtype=F64))


@pytest.mark.parametrize("sigma", [0.0, 0.05, torch.tensor([[0.0, 0.3, 0.1]], dtype=F64)])
def test_remdm_step_probabilities_follow_the_formula(sigma):
    x = torch.tensor([[MASK, 2, MASK]])
    theta = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=F64)
    a_t, a_s = 0.4, 0.6
    probs = remdm_step_probs(x, theta.expand(1, 3, 5), a_t, a_s, sigma, MASK)
    sig = torch.as_tensor(sigma, dtype=F64).expand(1, 3)[0]
    for pos in (0, 2):
        expected = theta * (a_s - (1 - sig[pos]) * a_t) / (1 - a_t)
        expected[MASK] = (1 - a_s - sig[pos] * a_t) / (1 - a_t)
        torch.testing.assert_close(probs[0, pos], expected, rtol=0, atol=1e-15)
    expected = torch.zeros(5, dtype=F64)
    expected[2], expected[MASK] = 1 - sig[1], sig[1]
    torch.testing.assert_close(probs[0, 1], expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 3, dtype=F64))


def test_gumbel_max_draws_the_categorical():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=F64).expand(40_000, 4)
    draws = gumbel_max(probs, gumbel_noise((40_000, 4), torch.Generator().manual_seed(0)))
    freq = torch.bincount(draws, minlength=4).double() / 40_000
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)


def test_top_p_rules():
    """reference (kuleshov-group/remdm, the default): cumulative mass ≤ p, plus the top-1; crossing: the
    smallest set whose mass reaches p."""
    probs = torch.tensor([0.05, 0.5, 0.3, 0.15], dtype=F64)
    crossing = top_p_filter(probs, 0.75, "crossing")
    torch.testing.assert_close(crossing, torch.tensor([0.0, 0.5, 0.3, 0.0], dtype=F64) / 0.8)
    torch.testing.assert_close(top_p_filter(probs, 0.75), torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(top_p_filter(probs, 0.8), torch.tensor([0.0, 0.5, 0.3, 0.0], dtype=F64) / 0.8)
    torch.testing.assert_close(top_p_filter(probs, 0.3), torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64))  # top-1
    issue = torch.tensor([0.6, 0.35, 0.05], dtype=F64)  # the issue's example: the reference keeps only the first
    torch.testing.assert_close(top_p_filter(issue, 0.9), torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(top_p_filter(probs, 1.0), probs)
    with pytest.raises(ValueError, match="nucleus rule"):
        top_p_filter(probs, 0.5, "smallest")


@pytest.mark.parametrize("rule", ["reference", "crossing"])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99, 1.0])
def test_compact_nucleus_equals_top_p_filter(top_p, rule):
    gen = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(3, 3000, generator=gen) * scale for scale in (0.1, 2.0, 8.0)])
    logits[:, MASK] = -1e6
    dense = top_p_filter(torch.softmax(logits.double(), -1), top_p, rule)
    for row, (ids, probs) in zip(dense, nucleus_rows(logits, top_p, rule)):
        assert top_p == 1.0 or (probs[:-1] >= probs[1:]).all()
        rebuilt = torch.zeros_like(row).index_put_((ids,), probs)
        torch.testing.assert_close(rebuilt, row, rtol=1e-12, atol=1e-15)


def test_two_stage_draw_is_the_dense_categorical():
    """stay/leave × nucleus, as the sampler draws it, multiplies out to remdm_step_probs exactly."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, generator=gen) * 2
    logits[:, MASK] = -1e6
    x = torch.tensor([MASK, 1, MASK, 3, MASK, 0])
    sigma = torch.tensor([0.0, 0.2, 0.1, 0.05, 0.3, 0.0], dtype=F64)
    a_t, a_s, top_p = 0.3, 0.5, 0.8
    x_theta = top_p_filter(torch.softmax(logits.double(), -1), top_p)
    dense = remdm_step_probs(x, x_theta, a_t, a_s, sigma, MASK)
    stay, leave = transition_groups(x == MASK, a_t, a_s, sigma)
    composed = torch.zeros_like(dense)
    for pos, (ids, probs) in enumerate(nucleus_rows(logits, top_p)):
        if x[pos] == MASK:
            composed[pos, ids] = leave[pos] * probs
            composed[pos, MASK] = stay[pos]
        else:
            composed[pos, x[pos]], composed[pos, MASK] = stay[pos], leave[pos]
    torch.testing.assert_close(composed, dense, rtol=1e-12, atol=1e-15)


def test_a_sampler_step_draws_with_those_frequencies():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, -1e6], [0.0] * 5])
    logits[1, MASK] = -1e6
    x0 = torch.tensor([MASK, 2])
    a_t, a_s, sigma = 0.2, 0.7, torch.tensor([0.0, 0.25], dtype=F64)
    dense = remdm_step_probs(x0, top_p_filter(torch.softmax(logits.double(), -1), 1.0), a_t, a_s, sigma, MASK)
    gen, n = torch.Generator().manual_seed(3), 6000
    counts = torch.zeros(2, 5, dtype=F64)
    for _ in range(n):
        x, psi = x0.clone(), torch.zeros(2, dtype=F64)
        _step_one(x, psi, x0 == MASK, logits, a_t, a_s, sigma, MASK, 1.0, gen)
        counts[0, x[0]] += 1
        counts[1, x[1]] += 1
    torch.testing.assert_close(counts / n, dense, atol=0.02, rtol=0)


class CountingDenoiser:
    """A fixed random 'model': logits depend on the input so caching must be exact to match."""

    def __init__(self, vocab: int):
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.table[z] + 0.1 * z.float().cumsum(-1)[..., None]


def config(name: str) -> SamplerConfig:
    etas = {"remdm_cap": 0.3, "remdm_rescale": 0.5, "remdm_loop": 0.1, "remdm_confidence": 0.1}
    return SamplerConfig(name=name, eta=etas.get(name, 0.0))


def test_caching_saves_evaluations_and_changes_nothing():
    cached = sample(CountingDenoiser(6), [0, 1, 2], seq_len=4, steps=32, mask_id=5, seed=1)
    uncached = sample(CountingDenoiser(6), [0, 1, 2], seq_len=4, steps=32, mask_id=5, seed=1, cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    # T = 32 random steps and the noise-removal pass (docs/method.md §5, as kuleshov-group/remdm): T + 1 forwards
    # uncached
    assert all(n < 33 for n in cached.nfe) and uncached.nfe == [33, 33, 33]
    assert not (cached.tokens == 5).any(), "the final step unmasks everything"


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_caches_exactly_and_ignores_its_batch(name):
    run = lambda idx, cache=True: sample(CountingDenoiser(6), idx, 6, 24, 5, seed=7, sampler=config(name),
                                         top_p=0.9, cache=cache)
    together, uncached = run([0, 1, 2, 3]), run([0, 1, 2, 3], cache=False)
    assert torch.equal(together.tokens, uncached.tokens)
    assert torch.equal(together.psi, uncached.psi)
    assert sum(together.nfe) < sum(uncached.nfe) == 4 * 25  # 24 steps + the noise-removal pass
    for i in range(4):
        alone = run([i])
        assert torch.equal(alone.tokens[0], together.tokens[i]) and alone.nfe[0] == together.nfe[i]
    assert not (together.tokens == 5).any()


def test_conf_state_is_the_probability_each_token_was_drawn_with():
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05, 0.0], dtype=F64)
    denoise = lambda z: probs.log().float().expand(*z.shape, 5).clone()
    result = sample(denoise, [0, 1], 32, 16, MASK, seed=0, sampler=SamplerConfig(name="remdm_conf"), top_p=1.0)
    drawn = result.psi > 0
    assert drawn.any()
    torch.testing.assert_close(result.psi[drawn], probs[result.tokens[drawn]].double(), rtol=1e-6, atol=0)
