from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from dsl_scale.data.loader import (
    GlobalBatches,
    check_manifest,
    epoch_permutation,
    open_shards,
)
from dsl_scale.data.streaming_compat import import_streaming


def test_import_streaming_without_torchvision():
    streaming = import_streaming()
    assert streaming.MDSWriter and streaming.LocalDataset
    if importlib.util.find_spec("torchvision") is None:
        assert sys.modules["streaming.vision"].DSL_SCALE_PLACEHOLDER is True


class ArangeBlocks:
    """Block i is [i, i, ..., i]: batches reveal exactly which indices were drawn."""

    def __init__(self, n: int, seq_len: int = 4) -> None:
        self.n, self.seq_len = n, seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return np.full(self.seq_len, i, dtype=np.int32)


def _ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].tolist()


def _global(ds, gb: int, dp: int, step: int, seed: int = 7) -> torch.Tensor:
    return torch.cat([GlobalBatches(ds, gb, r, dp, seed).batch_at(step) for r in range(dp)])


def test_dp_size_does_not_change_the_global_batch():
    ds = ArangeBlocks(37)
    for step in range(12):
        one = _global(ds, 8, 1, step)
        assert one.dtype == torch.int64 and one.shape == (8, 4)
        assert torch.equal(one, _global(ds, 8, 2, step))
        assert torch.equal(one, _global(ds, 8, 4, step))


def test_real_shards_batches(tiny_shards):
    ds = open_shards(str(tiny_shards), "train")
    a = GlobalBatches(ds, 4, 0, 1, seed=1).batch_at(3)
    b = torch.cat([GlobalBatches(ds, 4, r, 2, seed=1).batch_at(3) for r in range(2)])
    assert a.shape == (4, 32) and a.dtype == torch.int64 and torch.equal(a, b)
    assert ds.manifest["seq_len"] == 32


def test_resume_equals_continuation():
    ds = ArangeBlocks(23)
    for rank in range(2):
        full = list(itertools.islice(GlobalBatches(ds, 6, rank, 2, seed=3), 15))
        resumed = list(itertools.islice(GlobalBatches(ds, 6, rank, 2, seed=3, start_step=9), 6))
        assert all(torch.equal(x, y) for x, y in zip(full[9:], resumed, strict=True))
        assert torch.equal(full[11], GlobalBatches(ds, 6, rank, 2, seed=3).batch_at(11))


def test_epochs_are_seeded_permutations():
    n, gb = 10, 4
    ds = ArangeBlocks(n)
    drawn = [i for step in range(10) for i in _ids(GlobalBatches(ds, gb, 0, 1, seed=5).batch_at(step))]
    epochs = [drawn[e * n : (e + 1) * n] for e in range(4)]  # 40 positions = 4 epochs; step 2 straddles 0|1
    for e, ids in enumerate(epochs):
        assert sorted(ids) == list(range(n))
        assert ids == epoch_permutation(5, e, n).tolist()
    assert epochs[0] != epochs[1]
    assert drawn != [i for s in range(10) for i in _ids(GlobalBatches(ds, gb, 0, 1, seed=6).batch_at(s))]


def test_global_batch_larger_than_dataset():
    ds = ArangeBlocks(3)
    batch = _ids(GlobalBatches(ds, 8, 0, 1, seed=0).batch_at(0))
    assert sorted(batch[:3]) == sorted(batch[3:6]) == [0, 1, 2]


def test_bad_layout():
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatches(ArangeBlocks(10), 6, 0, 4, seed=0)


@pytest.fixture
def data_dir(tiny_shards, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tiny_shards, copy)
    return copy


def test_check_manifest_ok(data_dir):
    m = check_manifest(str(data_dir), 32, "gpt2", 50258)
    assert m["seq_len"] == 32


def test_check_manifest_mismatch_names_file_and_values(data_dir):
    with pytest.raises(ValueError) as info:
        check_manifest(str(data_dir), 64, "gpt2", 50258)
    msg = str(info.value)
    assert str(data_dir / "manifest.json") in msg and "seq_len=32" in msg and "seq_len=64" in msg
    with pytest.raises(ValueError, match=r"tokenizer='gpt2'.*tokenizer='char'"):
        check_manifest(str(data_dir), 32, "char", 50258)


def test_check_manifest_missing_dir_and_manifest(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*prepare_data\.py"):
        check_manifest(str(tmp_path / "nowhere"), 32, "gpt2", 50258)
    os.remove(data_dir / "manifest.json")
    with pytest.raises(FileNotFoundError, match=r"manifest\.json.*prepare_data\.py"):
        check_manifest(str(data_dir), 32, "gpt2", 50258)


def _first_shard(data_dir, split="train"):
    index = json.loads((data_dir / split / "index.json").read_text())
    return data_dir / split / index["shards"][0]["raw_data"]["basename"]


def test_check_manifest_missing_shard(data_dir):
    shard = _first_shard(data_dir)
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=re.escape(str(shard))):
        check_manifest(str(data_dir), 32, "gpt2", 50258)


def test_check_manifest_truncated_shard(data_dir):
    shard = _first_shard(data_dir, "val")
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(ValueError, match=rf"{re.escape(str(shard))}.*truncated.*{size - 10} bytes.*{size}"):
        check_manifest(str(data_dir), 32, "gpt2", 50258)


def test_check_manifest_empty_split(data_dir):
    index_file = data_dir / "val" / "index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "shards": []}))
    with pytest.raises(ValueError, match="val split .* 0 blocks"):
        check_manifest(str(data_dir), 32, "gpt2", 50258)
