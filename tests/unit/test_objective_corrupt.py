"""The discrete-corruption control (objective=mdlm_corrupt): its inputs and its loss against a hand computation."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.config import ObjectiveConfig
from dsl_scale.diffusion.objectives import MDLMCorruptObjective, build_objective, uniform_corruption

VOCAB, MASK = 9, 8


def nll_fn(logits: torch.Tensor, targets: torch.Tensor, suppressed: int) -> torch.Tensor:
    logits = logits.clone()
    logits[..., suppressed] = -torch.inf
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def test_corruption_hits_only_visible_positions_with_other_ids():
    tokens = torch.randint(0, MASK, (64, 32), generator=torch.Generator().manual_seed(0))
    keep = torch.rand(64, 32, generator=torch.Generator().manual_seed(1)) < 0.6
    choose, draw = (torch.rand(64, 32, generator=torch.Generator().manual_seed(s)) for s in (2, 3))
    ids, corrupted = uniform_corruption(tokens, keep, choose, draw, 0.3, MASK, VOCAB)
    assert not (corrupted & ~keep).any() and torch.equal(ids[~corrupted], tokens[~corrupted])
    assert (ids[corrupted] != tokens[corrupted]).all() and (ids < MASK).all()
    assert abs(corrupted.sum() / keep.sum() - 0.3) < 0.04
    assert set(ids[corrupted].tolist()) == set(range(MASK))  # every other id can be drawn
    with pytest.raises(ValueError, match="last id"):
        uniform_corruption(tokens, keep, choose, draw, 0.3, 3, VOCAB)


def test_loss_is_the_nelbo_plus_the_visible_cross_entropy_by_hand():
    objective = build_objective(ObjectiveConfig(name="mdlm_corrupt", corrupt_rate=0.5, visible_weight=0.7), MASK,
                                VOCAB, seed=3)
    assert isinstance(objective, MDLMCorruptObjective)
    tokens = torch.randint(0, MASK, (4, 16), generator=torch.Generator().manual_seed(4))
    batch = objective.prepare(tokens, torch.arange(4), key=7, batch_size=4, stream=0)
    masked, corrupted = batch.extras["masked"], batch.extras["corrupted"]
    assert torch.equal(batch.inputs == MASK, masked) and corrupted.any() and not (corrupted & masked).any()
    assert torch.equal(batch.targets, tokens)
    logits = torch.randn(4, 16, VOCAB, generator=torch.Generator().manual_seed(5))
    loss = objective.loss(logits, batch, nll_fn, 0)
    expected = 0.0
    for b in range(4):
        t = float(batch.extras["t"][b])
        for i in range(16):
            row = logits[b, i].clone()
            row[MASK] = -torch.inf
            nll = float(-torch.log_softmax(row, -1)[tokens[b, i]])
            expected += nll / t if masked[b, i] else 0.7 * nll  # NELBO weight 1/t (log-linear, eps folded in)
    expected /= 4 * 16
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_same_draws_whatever_the_batch_split():
    objective = build_objective(ObjectiveConfig(name="mdlm_corrupt"), MASK, VOCAB, seed=0)
    tokens = torch.randint(0, MASK, (6, 16), generator=torch.Generator().manual_seed(6))
    whole = objective.prepare(tokens, torch.arange(6), key=1, batch_size=6, stream=0)
    half = objective.prepare(tokens[3:], torch.arange(3, 6), key=1, batch_size=6, stream=0)
    assert torch.equal(whole.inputs[3:], half.inputs)
