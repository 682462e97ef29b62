"""MDLM objective (docs/method.md §3): forward masking rate, SUBS, NELBO weight, antithetic times."""

from __future__ import annotations

import math

import pytest
import torch

from dsl_scale.diffusion import mdlm
from dsl_scale.diffusion.schedules import antithetic_times, antithetic_times_at, log_linear_alpha, log_linear_sigma

MASK = 10


@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.99])
def test_masking_rate_is_one_minus_alpha(t):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, MASK, (64, 512), generator=g)
    times = torch.full((64,), t, dtype=torch.float64)
    z, masked = mdlm.mask_tokens(x, times, torch.rand(x.shape, generator=g, dtype=torch.float64), MASK)
    expected = 1 - float(log_linear_alpha(torch.tensor(t)))
    rate = masked.double().mean().item()
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / x.numel())
    assert torch.equal(z[masked], torch.full_like(z[masked], MASK))
    assert torch.equal(z[~masked], x[~masked])


def test_subs_never_predicts_mask_and_carries_unmasked_tokens():
    logits = torch.randn(2, 5, MASK + 1)
    z = torch.tensor([[MASK, 3, MASK, 7, 1], [2, MASK, MASK, MASK, 9]])
    log_probs = mdlm.subs_log_probs(logits, z, MASK)
    probs = log_probs.exp()
    assert torch.all(probs[..., MASK] == 0)
    unmasked = z != MASK
    assert torch.allclose(probs[unmasked].gather(-1, z[unmasked][:, None]), torch.ones(1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))
    # masked positions: softmax over the non-mask logits
    expected = torch.softmax(logits[0, 0, :MASK], -1)
    torch.testing.assert_close(probs[0, 0, :MASK], expected)


def test_suppress_mask_logit_on_a_vocab_parallel_shard():
    shard = torch.zeros(2, 3, 6)  # ids [6, 12) of a 12-id vocab
    mdlm.suppress_mask_logit_(shard, mask_id=MASK, vocab_start=6)
    assert torch.all(shard[..., MASK - 6] == mdlm.NEG_INF)
    other = torch.zeros(2, 3, 6)  # ids [0, 6): holds no mask logit
    assert torch.all(mdlm.suppress_mask_logit_(other, mask_id=MASK, vocab_start=0) == 0)


def test_loss_weight_is_one_over_t_and_loss_matches_hand_computation():
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(mdlm.loss_weight(t), 1 / t)
    nll = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    masked = torch.tensor([[True, False], [True, True], [False, False]])
    expected = (1.0 / 0.1 + (3.0 + 4.0) / 0.5) / 6
    assert mdlm.mdlm_loss(nll, masked, t).item() == pytest.approx(expected)


def test_sigma_is_minus_log_alpha():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(log_linear_sigma(t), -torch.log(1 - (1 - 1e-3) * t))


def test_antithetic_times_cover_the_interval_evenly():
    t = antithetic_times(8, u=0.37)
    assert t.min() >= 1e-3 and t.max() <= 1.0
    gaps = (t.sort().values.diff() / (1 - 1e-3))
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / 8))
    # the i-th time of a batch does not depend on how it is split across ranks: any positions' times, computed
    # alone (on their device, with the offset as a float or a device tensor), are the whole batch's at those positions
    positions = torch.tensor([6, 1, 4])
    for u in (0.37, torch.tensor(0.37, dtype=torch.float32)):
        torch.testing.assert_close(antithetic_times_at(positions, 8, u), antithetic_times(8, float(u))[positions])
    with pytest.raises(ValueError, match="at least one"):
        antithetic_times_at(positions, 0, 0.5)
