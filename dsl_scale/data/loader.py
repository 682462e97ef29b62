"""MDS shards for training: random access to blocks, and deterministic global batches.

Batches are a pure function of (seed, step, global_batch): global sample position c = step * global_batch + j
lies in epoch e = c // N and picks block perm_e(c % N), perm_e a seeded permutation of the N blocks. DP
rank r takes the contiguous slice j in [r * gb / dp, (r + 1) * gb / dp). Resuming at step k is just
`start_step=k`, and the global batch of a step does not depend on the DP size. perm_e is evaluated only at
the positions a step needs (permutation.KeyedPermutation), so a rank's memory does not grow with N.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from dsl_scale.data.checks import SPLITS, check_manifest, read_manifest  # noqa: F401  (this module's API)
from dsl_scale.data.permutation import KeyedPermutation, epoch_order, epoch_permutation  # noqa: F401  (API)
from dsl_scale.data.shard_hash import ShardChecks
from dsl_scale.data.streaming_compat import import_streaming
from dsl_scale.data.writers import MANIFEST_NAME, TOKENS_COLUMN


class Blocks(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...


class BlockDataset:
    """Random access to the packed blocks of one split (int32 arrays of length seq_len), from MDS shards.

    Local shards are read in place. With `remote` (`s3://...`, `gs://...`, or any URL or directory
    mosaicml-streaming can download from), `path` is the local cache: a shard is fetched when a block of
    it is first read (or asked for by `prefetch`); the processes of a node share the cache. With
    `check_hashes`, the first read from a shard checks its xxh3 against the manifest (shard_hash.py).
    """

    def __init__(self, path: str, split: str, remote: str = "", check_hashes: bool = True) -> None:
        streaming = import_streaming()
        if remote and not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            fetch_manifest(remote, path)
        self.manifest = read_manifest(path)
        if split not in self.manifest.get("splits", {}):
            raise ValueError(f"{os.path.join(path, MANIFEST_NAME)} has no {split!r} split")
        self.path, self.split, self.remote = path, split, remote
        self.seq_len: int = self.manifest["seq_len"]
        self._fetcher: tuple[int, ThreadPoolExecutor] | None = None  # (pid, thread): a forked worker makes its own
        if remote:
            self._ds = streaming.StreamingDataset(remote=remote, local=path, split=split, shuffle=False,
                                                  batch_size=1)
        else:
            self._ds = streaming.LocalDataset(local=path, split=split)
        self.checks = self._shard_checks(check_hashes)

    def _shard_checks(self, enabled: bool) -> ShardChecks:
        """Each shard's xxh3 against the manifest on its first read (see shard_hash.py)."""
        manifest_file = os.path.join(self.path, MANIFEST_NAME)
        entries = self.manifest.get("shards", {}).get("mds", {}).get(self.split, [])
        indexed = [f"{self.split}/{shard.raw_data.basename}" for shard in self._ds.shards]
        if entries and [e["file"] for e in entries] != indexed:
            raise ValueError(f"{manifest_file} and {self.path}/{self.split}/index.json list different MDS shards; "
                             "prepare the data again")
        return ShardChecks(self.path, entries, manifest_file, enabled)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks in {self.path}/{self.split}")
        if not self.remote:  # before reading, so a damaged header cannot fail with the reader's own message
            self.checks.check_block(int(i))
        block = self._ds[int(i)][TOKENS_COLUMN]
        if self.remote:  # a remote shard is on disk once a block of it has been read
            self.checks.check_block(int(i))
        return block

    def prefetch(self, indices: np.ndarray) -> None:
        """Start downloading, on a background thread, the remote shards that hold blocks `indices`.

        Local data: nothing to do. A failed download is not reported here: reading the block retries it
        and raises."""
        if not self.remote:
            return
        if self._fetcher is None or self._fetcher[0] != os.getpid():
            self._fetcher = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch"))
        for shard_id in sorted({int(self._ds.spanner[int(i)][0]) for i in indices}):
            self._fetcher[1].submit(self._ds.prepare_shard, shard_id, False)

    def __repr__(self) -> str:
        return f"BlockDataset({self.path!r}, {self.split!r}, blocks={len(self)}, seq_len={self.seq_len})"


def open_shards(path: str, split: str, remote: str = "", check_hashes: bool = True) -> BlockDataset:
    return BlockDataset(path, split, remote, check_hashes)


def fetch_manifest(remote: str, path: str, timeout: float = 60.0) -> None:
    """Download `<remote>/manifest.json` into the local cache directory `path`.

    Every rank may call this at once: each downloads under its own name and renames, so no rank ever
    reads a half-written manifest."""
    import_streaming()
    from streaming.base.storage import CloudDownloader

    final = os.path.join(path, MANIFEST_NAME)
    if os.path.isfile(final):
        return
    mine = f"{final}.{socket.gethostname()}.{os.getpid()}"
    CloudDownloader.direct_download(f"{remote.rstrip('/')}/{MANIFEST_NAME}", mine, timeout)
    os.replace(mine, final)


class GlobalBatches:
    """This DP rank's slice of the deterministic global batch of every step, from `start_step` on."""

    def __init__(
        self, dataset: Blocks, global_batch: int, dp_rank: int, dp_size: int, seed: int, start_step: int = 0
    ) -> None:
        if global_batch <= 0 or dp_size <= 0 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad batch layout: {global_batch=}, {dp_rank=}, {dp_size=}")
        if global_batch % dp_size:
            raise ValueError(f"global_batch {global_batch} is not divisible by the DP size {dp_size}")
        if len(dataset) == 0:
            raise ValueError("cannot draw batches from an empty dataset")
        self.dataset = dataset
        self.global_batch, self.dp_rank, self.dp_size = global_batch, dp_rank, dp_size
        self.local_batch = global_batch // dp_size
        self.seed, self.start_step = seed, start_step
        self._orders: dict[int, KeyedPermutation] = {}  # a few round keys per epoch, never N entries

    def _order(self, epoch: int) -> KeyedPermutation:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a step touches at most a couple of epochs (unless gb > N)
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(self.seed, epoch, len(self.dataset))
        return self._orders[epoch]

    def indices_at(self, step: int) -> np.ndarray:
        """Dataset indices of this rank's slice of step `step`'s global batch."""
        first = step * self.global_batch + self.dp_rank * self.local_batch
        positions = np.arange(first, first + self.local_batch, dtype=np.int64)
        epochs, offsets = np.divmod(positions, len(self.dataset))
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self._order(int(epoch))(offsets[here])
        return indices

    def prefetch(self, step: int) -> None:
        """Let the dataset start fetching what `step` will read (remote shards), if it fetches at all."""
        fetch = getattr(self.dataset, "prefetch", None)
        if fetch is not None:
            fetch(self.indices_at(step))

    def batch_at(self, step: int) -> torch.Tensor:
        """LongTensor [global_batch / dp_size, seq_len] for `step`."""
        blocks = np.stack([self.dataset[int(i)] for i in self.indices_at(step)])
        return torch.from_numpy(blocks.astype(np.int64))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for step in itertools.count(self.start_step):
            yield self.batch_at(step)
