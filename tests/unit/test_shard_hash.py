"""A shard damaged in place (its size unchanged) stops the run on its first read, naming the shard: real
shards from the project's writer, real bytes overwritten on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dsl_scale.config import DataConfig
from dsl_scale.data.batches import open_splits, train_batches
from dsl_scale.data.loader import open_shards
from dsl_scale.data.shard_hash import FAST_HASH, fast_hash
from dsl_scale.data.wds_reader import WdsSplit

SEQ_LEN, VOCAB = 32, 50258


@pytest.fixture()
def shards(tmp_path: Path, both_shards: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(both_shards, out)
    return out


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _flip(file: Path, at: int) -> None:
    """Overwrite 4 bytes at `at` with their complement (the file keeps its size)."""
    with open(file, "r+b") as f:
        f.seek(at)
        old = f.read(4)
        f.seek(at)
        f.write(bytes(255 - b for b in old))


def _first_block(entries: list[dict], shard: int) -> int:
    return sum(e["samples"] for e in entries[:shard])


def test_the_writer_records_the_fast_hash_of_every_shard(shards: Path):
    manifest = _manifest(shards)
    for fmt in ("mds", "wds"):
        for split in ("train", "val"):
            for entry in manifest["shards"][fmt][split]:
                assert entry[FAST_HASH] == fast_hash(str(shards / entry["file"]))


def test_a_damaged_mds_shard_stops_on_its_first_read(shards: Path):
    entries = _manifest(shards)["shards"]["mds"]["train"]
    target, shard = shards / entries[1]["file"], 1
    first = _first_block(entries, shard)
    whole = [open_shards(str(shards), "train")[i] for i in range(first, first + entries[shard]["samples"])]
    _flip(target, target.stat().st_size - 8)  # inside the last block's tokens

    unchecked = open_shards(str(shards), "train", check_hashes=False)  # what the run did before: silently other data
    read = [unchecked[i] for i in range(first, first + entries[shard]["samples"])]
    assert any(not np.array_equal(a, b) for a, b in zip(whole, read))

    checked = open_shards(str(shards), "train")
    checked[0]  # another shard: fine
    with pytest.raises(ValueError, match=rf"shard file {target} is damaged: its {FAST_HASH}"):
        checked[first]


def test_a_damaged_mds_shard_stops_the_training_batches(shards: Path):
    entries = _manifest(shards)["shards"]["mds"]["train"]
    target = shards / entries[-1]["file"]
    _flip(target, target.stat().st_size // 2)
    data = DataConfig(path=str(shards), source="", format="mds")
    train, _ = open_splits(data, SEQ_LEN, VOCAB, val_blocks=1)
    batches = train_batches(train, data, 8, 0, 1, seed=0)
    with pytest.raises(ValueError, match=rf"{target} is damaged"):
        for step in range(len(train) // 8 + 1):  # one epoch reads every shard
            batches.batch_at(step)


def test_a_damaged_webdataset_shard_stops_on_its_first_read(shards: Path):
    entries = _manifest(shards)["shards"]["wds"]["train"]
    target = shards / entries[2]["file"]
    _flip(target, 512 + 200)  # the first member's .npy payload
    unchecked = WdsSplit(str(shards), "train", check_hashes=False)
    unchecked.read(unchecked.shards[2])  # reads without a word
    split = WdsSplit(str(shards), "train")
    split.read(split.shards[0])
    with pytest.raises(ValueError, match=rf"shard file {target} is damaged"):
        split.read(split.shards[2])
    data = DataConfig(path=str(shards), source="", format="wds")
    train, _ = open_splits(data, SEQ_LEN, VOCAB, val_blocks=1)
    batches = train_batches(train, data, 8, 0, 1, seed=0)
    with pytest.raises(ValueError, match=rf"{target} is damaged"):
        for step in range(2 * len(train) // 8 + 1):
            batches.batch_at(step)


def test_data_without_fast_hashes_is_read_and_says_so(shards: Path, capsys: pytest.CaptureFixture):
    manifest = _manifest(shards)
    for per_split in manifest["shards"].values():
        for entries in per_split.values():
            for entry in entries:
                del entry[FAST_HASH]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    data = DataConfig(path=str(shards), source="", format="mds")
    train, _ = open_splits(data, SEQ_LEN, VOCAB, val_blocks=1)
    assert train[0].shape == (SEQ_LEN,)
    assert f"records no {FAST_HASH} shard hashes" in capsys.readouterr().err
    assert WdsSplit(str(shards), "train").head(3).shape == (3, SEQ_LEN)
