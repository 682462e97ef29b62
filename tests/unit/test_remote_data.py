"""Remote MDS shards (a local directory is a remote mosaicml-streaming downloads from, like s3://): a rank's
cache holds only the shards its served steps read, fetched ahead of the trainer; start-up checks are shared
out among the ranks."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dsl_scale.data.batches import MDSParts, StepBatches
from dsl_scale.data.checks import check_manifest
from dsl_scale.data.loader import GlobalBatches, open_shards

VOCAB = 50258


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, tiny_corpus) -> Path:
    """The tiny corpus at L 32 in 1 KiB MDS shards: a few dozen train shards of ~8 blocks."""
    from dsl_scale.data.prepare import prepare

    out = tmp_path_factory.mktemp("many_shards")
    prepare(str(tiny_corpus[0]), str(out), 32, val_fraction=0.2, shard_size_bytes=1024, progress=False)
    return out


def _shard_of_block(data: Path, split: str = "train"):
    """Block index -> its shard file (relative to the split directory), from the manifest's block order."""
    shards = json.loads((data / "manifest.json").read_text())["shards"]["mds"][split]
    ends = np.cumsum([s["samples"] for s in shards])
    files = [s["file"].removeprefix(f"{split}/") for s in shards]
    return lambda i: files[int(np.searchsorted(ends, i, side="right"))], files


def _needed(batches: GlobalBatches, steps, shard_of) -> set[str]:
    return {shard_of(i) for step in steps for i in batches.indices_at(step)}


def _cached(cache: Path) -> set[str]:
    return {str(p.relative_to(cache / "train")) for p in (cache / "train").rglob("*.mds")}


def _wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_cache_holds_the_shards_of_served_steps_and_the_next_one_fetched_ahead(many_shards, tmp_path):
    shard_of, files = _shard_of_block(many_shards)
    cache = tmp_path / "cache"
    remote = open_shards(str(cache), "train", remote=str(many_shards))
    local = GlobalBatches(open_shards(str(many_shards), "train"), 2, 0, 1, seed=4)
    served = StepBatches(MDSParts(GlobalBatches(remote, 2, 0, 1, seed=4)), num_workers=0)
    for step in range(3):
        assert torch.equal(served.batch_at(step), local.batch_at(step))
    wanted = _needed(local, range(4), shard_of)  # steps 0-2 read, step 3's shards fetched in the background
    assert wanted - _needed(local, range(3), shard_of), "step 3 should need a shard steps 0-2 did not"
    _wait_until(lambda: _cached(cache) >= wanted)
    assert _cached(cache) == wanted
    assert len(files) >= 16 and len(wanted) <= 8


def test_data_loader_workers_download_ahead_of_the_trainer(many_shards, tmp_path):
    shard_of, files = _shard_of_block(many_shards)
    cache = tmp_path / "cache"
    batches = GlobalBatches(open_shards(str(cache), "train", remote=str(many_shards)), 2, 0, 1, seed=8)
    served = StepBatches(MDSParts(batches), num_workers=1)
    served.batch_at(0)
    served.batch_at(1)
    ahead = _needed(batches, range(4), shard_of)  # the worker builds prefetch_factor = 2 steps ahead
    _wait_until(lambda: _cached(cache) >= ahead)
    served.close()
    assert ahead <= _cached(cache) <= _needed(batches, range(6), shard_of) and len(_cached(cache)) < len(files) / 2


@pytest.fixture
def data_copy(many_shards, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(many_shards, copy)
    return copy


def test_start_up_checks_share_the_shard_files_out_among_ranks(data_copy):
    manifest = json.loads((data_copy / "manifest.json").read_text())
    world = 3
    for split in ("train", "val"):  # leave only the files rank 0 of 3 checks
        for i, shard in enumerate(manifest["shards"]["mds"][split]):
            if i % world:
                os.remove(data_copy / shard["file"])
    check_manifest(str(data_copy), 32, "gpt2", VOCAB, share=(0, world))
    missing = data_copy / manifest["shards"]["mds"]["train"][1]["file"]
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        check_manifest(str(data_copy), 32, "gpt2", VOCAB, share=(1, world))
    with pytest.raises(FileNotFoundError):
        check_manifest(str(data_copy), 32, "gpt2", VOCAB)  # one process checks them all
    with pytest.raises(ValueError, match="bad check share"):
        check_manifest(str(data_copy), 32, "gpt2", VOCAB, share=(3, world))


def test_each_shard_file_is_checked_by_exactly_one_rank(data_copy):
    manifest = json.loads((data_copy / "manifest.json").read_text())
    victim = data_copy / manifest["shards"]["mds"]["val"][-1]["file"]
    with open(victim, "r+b") as f:
        f.truncate(100)
    failed = []
    for rank in range(4):
        try:
            check_manifest(str(data_copy), 32, "gpt2", VOCAB, share=(rank, 4))
        except ValueError as err:
            assert str(victim) in str(err) and "truncated" in str(err)
            failed.append(rank)
    assert len(failed) == 1
