"""The objectives' `prepare` draws (times, masks, SNRs, channel noise) on the tokens' device with the counter-based
generator: the same batches whichever way the global batch is split over DP ranks and micro-batches, the same
on resume, antithetic times over the global batch, and a fixed batch of kernels whatever the batch size."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dsl_scale.config import Config, ObjectiveConfig, TrainConfig
from dsl_scale.core import seeding
from dsl_scale.core.batch import Prepared
from dsl_scale.diffusion.objectives import build_objective
from dsl_scale.diffusion.schedules import log_linear_alpha

VOCAB, MASK_ID, L = 64, 63, 32
NAMES = ["mdlm", "dsl"]


def objective(name: str, seed: int = 1):
    return build_objective(ObjectiveConfig(name, **({"key_dim": 8} if name == "dsl" else {})), MASK_ID, VOCAB, seed)


def tokens(b: int = 8) -> torch.Tensor:
    return torch.randint(0, MASK_ID, (b, L), generator=torch.Generator().manual_seed(0), device="cpu")


def tensors(batch: Prepared) -> dict[str, torch.Tensor]:
    found = {"inputs": batch.inputs, "targets": batch.targets, "sigma": batch.sigma}
    found.update({f"extras.{k}": v for k, v in batch.extras.items()})
    found.update({f"model_kwargs.{k}": v for k, v in batch.model_kwargs.items()})
    return {k: v for k, v in found.items() if v is not None}


def assert_batches_equal(parts: list[Prepared], whole: Prepared) -> None:
    expected = tensors(whole)
    for name, value in expected.items():
        joined = torch.cat([tensors(p)[name] for p in parts])
        assert torch.equal(joined, value), name


def micro_batches(name: str, dp: int, micro: int, step: int) -> list[Prepared]:
    """What the trainer's DP ranks prepare for a global batch of 8 at `step`, in global order."""
    from dsl_scale.train.trainer import Trainer

    trainer = Trainer.__new__(Trainer)  # only what _micro_batches reads
    trainer.cfg = Config(train=TrainConfig(micro_batch=micro, seed=1))
    trainer.objective = objective(name)
    ids, per_rank = tokens(), 8 // dp
    return [b for rank in range(dp) for b in trainer._micro_batches(ids[rank * per_rank:(rank + 1) * per_rank],
                                                                    rank * per_rank, step, 8, seeding.MASK_STREAM)]


@pytest.mark.parametrize("name", NAMES)
def test_batches_do_not_depend_on_the_dp_size_or_the_micro_batch(name):
    whole = objective(name).prepare(tokens(), torch.arange(8), 5, 8, seeding.MASK_STREAM)
    for dp, micro in ((1, 8), (2, 4), (2, 1), (4, 2)):
        assert_batches_equal(micro_batches(name, dp, micro, 5), whole)


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_run_redraws_the_same_batch_and_other_keys_differ(name):
    ids, positions = tokens(), torch.arange(8)
    first = tensors(objective(name).prepare(ids, positions, 5, 8, seeding.MASK_STREAM))
    again = tensors(objective(name).prepare(ids, positions, 5, 8, seeding.MASK_STREAM))  # a fresh process's object
    assert all(torch.equal(first[k], again[k]) for k in first)
    noisy = "model_kwargs.z" if name == "dsl" else "inputs"
    for other in (objective(name).prepare(ids, positions, 6, 8, seeding.MASK_STREAM),
                  objective(name).prepare(ids, positions, 5, 8, seeding.EVAL_STREAM),
                  objective(name, seed=2).prepare(ids, positions, 5, 8, seeding.MASK_STREAM)):
        assert not torch.equal(tensors(other)[noisy], first[noisy])


def test_mdlm_times_are_antithetic_over_the_global_batch_and_masks_follow_them():
    mdlm = objective("mdlm")
    halves = [mdlm.prepare(tokens(64)[i:i + 32], torch.arange(i, i + 32), 3, 64, seeding.MASK_STREAM) for i in (0, 32)]
    t = torch.cat([h.extras["t"] for h in halves])
    gaps = t.sort().values.diff() / (1 - mdlm.eps)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / 64))
    masked = torch.cat([h.extras["masked"] for h in halves]).double()
    expected = 1 - log_linear_alpha(t, mdlm.eps)
    # per-row rates are binomial(L, 1 − α_t): the standardised mean over 64 rows is ~N(0, 1)
    z = ((masked.mean(1) - expected) / (expected * (1 - expected) / L).sqrt()).sum() / math.sqrt(64)
    assert abs(z.item()) < 4
    # the step's offset moves every time
    other = mdlm.prepare(tokens(64)[:32], torch.arange(32), 4, 64, seeding.MASK_STREAM).extras["t"]
    assert not torch.allclose(other, t[:32])


class OpLog(TorchDispatchMode):
    """Records each aten op run and the devices of its tensor outputs."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[torch.Tensor]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        self.ops.append((str(func), [t for t in flat if isinstance(t, torch.Tensor)]))
        return out


@pytest.mark.parametrize("name", NAMES)
def test_prepare_draws_on_the_device_in_a_fixed_number_of_ops(name):
    """On the `meta` device (standing in for a GPU): no host tensor of a sequence's size is made (the draws are
    on the device), and the op count does not grow with the batch (no per-example loop)."""
    counts = []
    for b in (2, 8):
        ids = tokens(b).to("meta")
        positions = torch.arange(b, device="cpu")
        prepare = objective(name).prepare
        with OpLog() as log:
            prepare(ids, positions, 3, 8, seeding.MASK_STREAM)
        host = [op for op, outs in log.ops if any(t.device.type == "cpu" and t.numel() >= L for t in outs)]
        assert not host, f"host-side work of a sequence's size: {host}"
        counts.append(len(log.ops))
    assert counts[0] == counts[1], f"ops for 2 and 8 sequences: {counts}"


def test_bad_positions_are_refused_before_drawing():
    for positions in (torch.arange(3), torch.zeros(8)):
        with pytest.raises(ValueError, match="positions"):
            objective("mdlm").prepare(tokens(), positions, 0, 8, seeding.MASK_STREAM)
