"""optim.schedule: warm-up then constant (MDLM's), cosine or warmup-stable-decay, as DeepSpeed's engine steps it."""

from __future__ import annotations

import math

import pytest
import torch

from dsl_scale.parallel.engine import lr_factor, warmup_then_constant


def test_constant_cosine_and_wsd_factors():
    assert [lr_factor(k, 4) for k in (1, 2, 4, 100)] == [0.25, 0.5, 1.0, 1.0]
    cosine = [lr_factor(k, 2, "cosine", 12, 0.1) for k in (1, 2, 7, 12, 20)]
    assert cosine == pytest.approx([0.5, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), 0.1, 0.1])
    wsd = [lr_factor(k, 2, "wsd", 10, 0.0, 4) for k in (1, 2, 6, 7, 8, 10)]
    assert wsd == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.0])


def test_the_scheduler_gives_each_update_its_factor():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = warmup_then_constant(optimizer, 2, "cosine", 6, 0.1)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])  # the lr the k-th update uses
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_factor(k, 2, "cosine", 6, 0.1) for k in range(1, 7)])
    assert seen[-1] == pytest.approx(0.1)


def test_wsd_needs_its_decay_steps():
    from dsl_scale.config import Config, OptimConfig, validate

    with pytest.raises(ValueError, match="optim.schedule=wsd needs 0 < optim.decay_steps=0"):
        validate(Config(optim=OptimConfig(schedule="wsd")))
    with pytest.raises(ValueError, match=r"optim.schedule='linear' is not one of"):
        validate(Config(optim=OptimConfig(schedule="linear")))
