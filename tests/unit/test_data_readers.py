"""Readers over real shards on disk: MDS and webdataset, data-loader workers, resumption, errors."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from dsl_scale.data.batches import MDSParts, StepBatches
from dsl_scale.data.checks import check_manifest
from dsl_scale.data.loader import GlobalBatches, epoch_permutation, open_shards
from dsl_scale.data.wds_reader import WdsBatches, WdsSplit, read_tar_blocks, stream_blocks

VOCAB = 50258


def _all_blocks(path) -> list[bytes]:
    ds = open_shards(str(path), "train")
    return [ds[i].tobytes() for i in range(len(ds))]


def _wds(path, gb=8, rank=0, dp=1, workers=0, streams=4, seed=2) -> StepBatches:
    return StepBatches(WdsBatches(WdsSplit(str(path), "train"), gb, rank, dp, seed, streams), workers)


def test_both_formats_hold_the_same_blocks_in_the_same_order(both_shards):
    manifest = check_manifest(str(both_shards), 32, "gpt2", VOCAB, fmt="wds")
    wds = [b.tobytes() for s in manifest["shards"]["wds"]["train"]
           for b in read_tar_blocks(str(both_shards / s["file"]), s["samples"])]
    blocks = _all_blocks(both_shards)
    assert wds == blocks and len(blocks) == manifest["splits"]["train"]["blocks"] > 100
    assert len(set(blocks)) == len(blocks)  # distinct, so block identity is content below
    assert len(manifest["shards"]["wds"]["train"]) > 16 and manifest["splits"]["train"]["groups"] == 3


def test_mds_workers_and_restarts_do_not_change_batches(both_shards):
    ds = open_shards(str(both_shards), "train")
    for rank in range(2):
        reference = [GlobalBatches(ds, 8, rank, 2, seed=5).batch_at(k) for k in range(3, 40)]
        for workers in (0, 1, 2):
            served = StepBatches(MDSParts(GlobalBatches(ds, 8, rank, 2, seed=5)), workers)
            got = [served.batch_at(k) for k in range(3, 40)]
            assert all(torch.equal(a, b) for a, b in zip(reference, got, strict=True)), (rank, workers)
            assert torch.equal(served.batch_at(10), reference[7])  # a jump back restarts the stream
            assert torch.equal(served.batch_at(11), reference[8])


def test_wds_batches_do_not_depend_on_workers_dp_size_or_restarts(both_shards):
    steps = 40  # > 2 epochs of the ~130 train blocks at 8 per step
    reference = [b.clone() for b in map(_wds(both_shards).batch_at, range(steps))]
    assert reference[0].shape == (8, 32) and reference[0].dtype == torch.int64
    two_workers = _wds(both_shards, workers=2)
    assert all(torch.equal(two_workers.batch_at(k), reference[k]) for k in range(steps))
    ranks = [_wds(both_shards, rank=r, dp=2, workers=1) for r in range(2)]
    assert all(torch.equal(torch.cat([r.batch_at(k) for r in ranks]), reference[k]) for k in range(steps))
    for start in (1, 13, 31):  # a restart at `start`, at another DP size and worker count
        resumed = [_wds(both_shards, rank=r, dp=2, workers=2 - r) for r in range(2)]
        assert all(torch.equal(torch.cat([r.batch_at(k) for r in resumed]), reference[k])
                   for k in range(start, steps))
    other_seed = _wds(both_shards, seed=3)
    assert not torch.equal(other_seed.batch_at(0), reference[0])


def test_wds_each_stream_sees_its_epoch_once_and_streams_do_not_overlap(both_shards):
    split, seed, n_streams = WdsSplit(str(both_shards), "train"), 2, 4
    blocks, first_epoch = _all_blocks(both_shards), []
    for s in range(n_streams):
        shards = epoch_permutation(seed, 0, len(split.shards))[s::n_streams]
        n = sum(split.shards[i].samples for i in shards)
        items = [b.tobytes() for b in itertools.islice(stream_blocks(split, seed, s, n_streams, 0), 2 * n)]
        assert sorted(items[:n]) != items[:n] or n < 3  # shuffled within the stream
        assert set(items[n:]) != set(items[:n])  # epoch 1 gives the stream other shards
        first_epoch += items[:n]
    assert sorted(first_epoch) == sorted(blocks)  # every block exactly once over the streams' first epochs


def test_wds_stream_layout_errors(both_shards):
    split = WdsSplit(str(both_shards), "train")
    with pytest.raises(ValueError, match=r"streams=3.*global_batch=8"):
        WdsBatches(split, 8, 0, 1, seed=0, streams=3)
    with pytest.raises(ValueError, match=r"streams=2.*DP size 4"):
        WdsBatches(split, 8, 0, 4, seed=0, streams=2)
    with pytest.raises(ValueError, match="exceeds the .* webdataset shards"):
        WdsBatches(split, 1024, 0, 1, seed=0, streams=1024)


def test_pipe_urls_and_remote_mds_cache(both_shards, tmp_path):
    local = WdsSplit(str(both_shards), "val")
    piped = WdsSplit(str(both_shards), "val", remote=f"pipe:cat {both_shards}/{{path}}")
    assert piped.shards[0].url.startswith("pipe:cat ")
    assert np.array_equal(piped.head(20), local.head(20))
    cache = tmp_path / "cache"  # a directory is a "remote" mosaicml-streaming downloads from, like s3://
    remote = open_shards(str(cache), "train", remote=str(both_shards))
    assert (cache / "manifest.json").is_file()
    assert [remote[i].tobytes() for i in range(len(remote))] == _all_blocks(both_shards)


@pytest.fixture
def data_copy(both_shards, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(both_shards, copy)
    return copy


def _first(data_copy, fmt, split="train"):
    return data_copy / json.loads((data_copy / "manifest.json").read_text())["shards"][fmt][split][0]["file"]


def test_truncated_or_missing_wds_shard_is_named(data_copy):
    shard = _first(data_copy, "wds")
    with open(shard, "r+b") as f:
        f.truncate(1500)  # inside the second sample (tar members are 512-byte aligned)
    with pytest.raises(ValueError, match=rf"{re.escape(str(shard))} is truncated.*1500 bytes"):
        check_manifest(str(data_copy), 32, "gpt2", VOCAB, fmt="wds")
    with pytest.raises(ValueError, match=rf"{re.escape(str(shard))}.*(unreadable|holds)"):
        WdsSplit(str(data_copy), "train").head(1)  # reading without the check still names the shard
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=re.escape(str(shard))):
        check_manifest(str(data_copy), 32, "gpt2", VOCAB, fmt="wds")


def test_checksums_format_and_config_mismatch(data_copy, tiny_shards):
    shard = _first(data_copy, "mds", "val")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the checksum sees it
    shard.write_bytes(bytes(data))
    check_manifest(str(data_copy), 32, "gpt2", VOCAB)
    with pytest.raises(ValueError, match=rf"{re.escape(str(shard))} is damaged: its sha256"):
        check_manifest(str(data_copy), 32, "gpt2", VOCAB, verify_checksums=True)
    with pytest.raises(ValueError, match=r"format 'mds' has no 'wds' shards.*--format wds"):
        check_manifest(str(tiny_shards), 32, "gpt2", VOCAB, fmt="wds")
    with pytest.raises(ValueError, match=r"manifest\.json.*seq_len=32.*seq_len=64"):
        check_manifest(str(data_copy), 64, "gpt2", VOCAB, fmt="wds")
