"""Webdataset tar shards for training: sequential reading made as exact as the format allows.

A tar shard can only be read front to back, so blocks cannot be drawn by index as with MDS. Instead the
run has S "streams" (`data.streams`, fixed for the run; S divides the global batch). Stream s reads,
in epoch e, the shards perm_e(s), perm_e(s + S), ... (perm_e a seeded permutation of the shards, of the
kind MDS orders blocks with), each whole, in a seeded within-shard order (the shuffle buffer is the
whole shard). Step k's global batch is, stream by stream in order, items [k * gb/S, (k + 1) * gb/S) of
each stream; DP rank r owns the contiguous streams [r * S/dp, (r + 1) * S/dp), and its data-loader
workers split those streams.

So a stream's position after step k is k * gb/S items, and the manifest's per-shard block counts say
which shard and offset that is: a restart at step k skips whole shards unread, reads the current one
and drops the blocks already used. The batches after a restart equal an uninterrupted run's, for any
DP size dividing S and any worker count. What differs from MDS: each stream runs through its own
epochs (streams get different block counts per epoch), so "every block once per epoch" holds per
stream, not at one global step; with shards of equal size the streams stay in step.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dsl_scale.data.checks import read_manifest
from dsl_scale.data.permutation import epoch_order
from dsl_scale.data.shard_hash import ShardChecks
from dsl_scale.data.writers import MANIFEST_NAME, WDS_EXTENSION

MAX_AUTO_STREAMS = 16


@dataclass(frozen=True)
class WdsShard:
    index: int  # position in block order
    url: str
    samples: int


def shard_url(path: str, remote: str, relative: str) -> str:
    """Where a shard is read from: under `path`, under a URL prefix, or a `pipe:` command with `{path}`."""
    if not remote:
        return os.path.join(path, relative)
    if remote.startswith("pipe:"):
        if "{path}" not in remote:
            raise ValueError(f"data.remote={remote!r}: a pipe: command needs a {{path}} placeholder for the shard")
        return remote.replace("{path}", relative)
    return f"{remote.rstrip('/')}/{relative}"


def read_tar_blocks(url: str, expected: int, check: Callable[[bytes], None] | None = None) -> list[np.ndarray]:
    """All blocks of one tar shard, in file order; a truncated or short shard is an error naming it. `check`
    gets the shard's bytes first (its hash check), when given."""
    import webdataset

    blocks = []
    try:
        with webdataset.gopen(url, "rb") as stream:
            data = stream.read()
        if check is not None:
            check(data)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("." + WDS_EXTENSION):
                    blocks.append(np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False))
    except (tarfile.TarError, OSError, ValueError) as err:
        raise ValueError(f"webdataset shard {url} is unreadable (truncated or damaged?): {err}") from err
    if len(blocks) != expected:
        raise ValueError(f"webdataset shard {url} holds {len(blocks)} blocks, the manifest says {expected}")
    return blocks


class WdsSplit:
    """The tar shards of one split in block order, with their block counts from the manifest."""

    def __init__(self, path: str, split: str, remote: str = "", check_hashes: bool = True) -> None:
        self.manifest = read_manifest(path)
        entries = self.manifest.get("shards", {}).get("wds", {}).get(split)
        if not entries:
            raise ValueError(f"{os.path.join(path, MANIFEST_NAME)} lists no webdataset shards for {split!r}")
        self.path, self.split, self.seq_len = path, split, self.manifest["seq_len"]
        self.shards = [WdsShard(i, shard_url(path, remote, e["file"]), e["samples"]) for i, e in enumerate(entries)]
        self.checks = ShardChecks(path, entries, os.path.join(path, MANIFEST_NAME), check_hashes)

    def read(self, shard: WdsShard) -> list[np.ndarray]:
        """The blocks of `shard`; this process's first read of it checks its xxh3 against the manifest."""
        check = None
        if self.checks.needs(shard.index):
            def check(data: bytes) -> None:
                self.checks.check_bytes(shard.index, data, shard.url)
        return read_tar_blocks(shard.url, shard.samples, check)

    def __len__(self) -> int:
        return sum(s.samples for s in self.shards)

    def head(self, n: int) -> np.ndarray:
        """The first `n` blocks in block order (or all), as int32 [n, seq_len]: fixed validation blocks."""
        blocks: list[np.ndarray] = []
        for shard in self.shards:
            if len(blocks) >= n:
                break
            blocks.extend(self.read(shard))
        return np.stack(blocks[:n])

    def __repr__(self) -> str:
        return f"WdsSplit({self.path!r}, {self.split!r}, shards={len(self.shards)}, blocks={len(self)})"


def auto_streams(global_batch: int, n_shards: int) -> int:
    """Default S: the largest divisor of the global batch up to min(#shards, 16) (independent of the DP size)."""
    limit = max(1, min(n_shards, MAX_AUTO_STREAMS))
    return max(d for d in range(1, limit + 1) if global_batch % d == 0)


def stream_blocks(split: WdsSplit, seed: int, stream: int, n_streams: int, start: int) -> Iterator[np.ndarray]:
    """Stream `stream`'s blocks forever, from its `start`-th on (see the module doc)."""
    epoch, skip = 0, start
    while True:
        order = epoch_order(seed, epoch, len(split.shards))  # the shard order, evaluated at this stream's positions
        shards = [split.shards[i] for i in order(np.arange(stream, len(split.shards), n_streams))]
        total = sum(s.samples for s in shards)
        if skip >= total:  # a whole epoch of this stream lies before `start`: nothing to read
            skip -= total
            epoch += 1
            continue
        for shard in shards:
            if skip >= shard.samples:
                skip -= shard.samples
                continue
            blocks = split.read(shard)
            order = np.random.default_rng([seed, epoch, shard.index]).permutation(len(blocks))
            for i in order[skip:]:
                yield blocks[i]
            skip = 0
        epoch += 1


class WdsBatches:
    """This DP rank's part of each step's global batch, produced stream by stream (see the module doc)."""

    def __init__(self, split: WdsSplit, global_batch: int, dp_rank: int, dp_size: int, seed: int,
                 streams: int = 0) -> None:
        n_streams = streams or auto_streams(global_batch, len(split.shards))
        if global_batch % n_streams or n_streams % dp_size:
            raise ValueError(
                f"webdataset reading with data.streams={n_streams}{' (auto)' if not streams else ''} needs "
                f"streams to divide train.global_batch={global_batch} and to be a multiple of the DP size "
                f"{dp_size}; set data.streams accordingly"
            )
        if n_streams > len(split.shards):
            raise ValueError(f"data.streams={n_streams} exceeds the {len(split.shards)} webdataset shards of "
                             f"{split.path}/{split.split}; prepare smaller shards or use fewer streams")
        self.split, self.seed, self.n_streams = split, seed, n_streams
        self.per_stream = global_batch // n_streams
        per_rank = n_streams // dp_size
        self.rank_streams = list(range(dp_rank * per_rank, (dp_rank + 1) * per_rank))

    def items_per_step(self, num_workers: int) -> int:
        return max(num_workers, 1)

    def parts(self, start_step: int, worker: int, num_workers: int) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """(step, {stream: blocks}) for every step from `start_step`, for this worker's share of the streams."""
        mine = self.rank_streams[worker :: max(num_workers, 1)]
        iters = {s: stream_blocks(self.split, self.seed, s, self.n_streams, start_step * self.per_stream)
                 for s in mine}
        step = start_step
        while True:
            yield step, {s: torch.from_numpy(np.stack([next(it) for _ in range(self.per_stream)]))
                         for s, it in iters.items()}
            step += 1

