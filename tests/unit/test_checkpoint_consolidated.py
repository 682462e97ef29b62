"""The consolidated format: each rank reads only its tensor-parallel slice, and the layout-free tag is
recognised by every reader (init_from, inference, conversion)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dsl_scale.checkpoint.consolidated import ConsolidatedCheckpoint
from dsl_scale.checkpoint.consolidated import write_consolidated as write
from dsl_scale.checkpoint.readers import TensorSource
from dsl_scale.checkpoint.source import open_checkpoint
from dsl_scale.core.files import atomic_directory


@pytest.fixture
def checkpoint(tmp_path):
    tensors = {"model": {"col": torch.arange(32.0).view(8, 4), "row": torch.arange(24.0).view(4, 6),
                         "rep": torch.ones(3)},
               "ema": {"col": -torch.arange(32.0).view(8, 4)}}
    with atomic_directory(tmp_path / "c") as tmp:
        write(TensorSource(tensors, {"model": {}}, step=9), tmp)
    return ConsolidatedCheckpoint(tmp_path / "c"), tensors


def test_each_rank_reads_its_slice(checkpoint):
    ckpt, tensors = checkpoint
    targets = {"col": SimpleNamespace(shape=(4, 4), partition_dim=0), "row": SimpleNamespace(shape=(4, 3),
               partition_dim=1), "rep": SimpleNamespace(shape=(3,)), "absent": SimpleNamespace(shape=(1,))}
    for rank in (0, 1):
        local = ckpt.local("model", targets, rank)
        assert set(local) == {"col", "row", "rep"}
        assert torch.equal(local["col"], tensors["model"]["col"].chunk(2, 0)[rank])
        assert torch.equal(local["row"], tensors["model"]["row"].chunk(2, 1)[rank])
        assert torch.equal(local["rep"], tensors["model"]["rep"])
    with pytest.raises(ValueError, match="col has shape"):
        ckpt.local("model", {"col": SimpleNamespace(shape=(3, 4), partition_dim=0)}, 0)


def test_readers_take_a_consolidated_directory(checkpoint, tmp_path):
    ckpt, tensors = checkpoint
    assert ckpt.step == 9 and ckpt.available() == ["model", "ema"] and not ckpt.has_optimizer
    assert open_checkpoint(ckpt.dir).path == ckpt.dir
    state, which = open_checkpoint(ckpt.dir).weights()
    assert which == "ema" and torch.equal(state["col"], tensors["ema"]["col"])
    assert torch.equal(state["row"], tensors["model"]["row"])
    state, which = open_checkpoint(ckpt.dir).weights("model")
    assert which == "model" and torch.equal(state["col"], tensors["model"]["col"])
