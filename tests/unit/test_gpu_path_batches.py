"""Batches reach the compute device. On a machine without a GPU the compute device is the CPU, so the trainer's
`compute_device` is pointed at PyTorch's `meta` device here: like CUDA, it is not the CPU, and an operation that
mixes its tensors with CPU tensors fails. Every tensor the model and the loss read must land there (drawn there by
the counter-based generator, core/counter_rng.py), except the dropout seeds, which the model reads on the host."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.config import Config, ObjectiveConfig, TrainConfig
from dsl_scale.core import seeding
from dsl_scale.core.batch import Prepared
from dsl_scale.diffusion.objectives import build_objective

META = torch.device("meta")
VOCAB, MASK_ID = 64, 63


def tensors(batch: Prepared) -> dict[str, torch.Tensor]:
    found = {"inputs": batch.inputs, "targets": batch.targets, "sigma": batch.sigma}
    found.update({f"extras.{k}": v for k, v in batch.extras.items()})
    found.update({f"model_kwargs.{k}": v for k, v in batch.model_kwargs.items()})
    return {k: v for k, v in found.items() if v is not None}


def tokens(b: int = 4, length: int = 16) -> torch.Tensor:
    return torch.randint(0, MASK_ID, (b, length), generator=torch.Generator().manual_seed(0), device="cpu")


@pytest.mark.parametrize("name", ["mdlm", "dsl", "ar"])
def test_prepare_returns_every_tensor_on_the_device_of_the_tokens(name):
    objective = build_objective(ObjectiveConfig(name, **({"key_dim": 8} if name == "dsl" else {})), MASK_ID,
                                VOCAB, seed=1)
    ids = tokens()
    positions = torch.arange(4, 8, device="cpu")
    on_host = objective.prepare(ids, positions, 3, 8, seeding.MASK_STREAM)
    on_meta = objective.prepare(ids.to(META), positions, 3, 8, seeding.MASK_STREAM)
    host, meta = tensors(on_host), tensors(on_meta)
    assert set(host) == set(meta) and len(meta) >= 2
    for key, value in meta.items():
        assert value.device == META, key
        assert value.shape == host[key].shape and value.dtype == host[key].dtype, key
    assert all(v.device.type == "cpu" for v in host.values())


def test_the_trainers_micro_batches_are_on_the_compute_device_and_dropout_seeds_on_the_host(monkeypatch):
    from dsl_scale.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "compute_device", lambda: META)
    trainer = trainer_module.Trainer.__new__(trainer_module.Trainer)  # only what _micro_batches reads
    trainer.cfg = Config(train=TrainConfig(micro_batch=2, seed=1))
    for name in ("mdlm", "dsl"):
        trainer.objective = build_objective(ObjectiveConfig(name, **({"key_dim": 8} if name == "dsl" else {})),
                                            MASK_ID, VOCAB, seed=1)
        batches = trainer._micro_batches(tokens(), 4, 0, 8, seeding.EVAL_STREAM)
        assert len(batches) == 2
        for batch in batches:
            assert all(v.device == META for v in tensors(batch).values()), (name, tensors(batch))
            assert batch.dropout_seeds.device.type == "cpu" and len(batch.dropout_seeds) == 2
