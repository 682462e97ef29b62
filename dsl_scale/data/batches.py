"""What the trainer calls: open a run's data (checked first) and serve `batch_at(step)` through workers.

Data-loader workers never change the batches: for MDS, worker w of W builds the batches of steps
start + w, start + w + W, ... (each a pure function of the step, see loader.GlobalBatches) and the
DataLoader hands them out in step order; for webdataset, each worker reads a share of the rank's
streams and every step's parts are put back together in stream order. Only the DP rank selects data:
all TP/PP ranks of one replica get the same batches. Remote MDS shards are downloaded when a step first
needs them, by the workers that build the batches (or, with no workers, on a background thread one step
ahead of the trainer), never all at once.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dsl_scale.data.checks import check_manifest, reader_format
from dsl_scale.data.loader import GlobalBatches, open_shards
from dsl_scale.data.wds_reader import WdsBatches, WdsSplit


class PartSource(Protocol):
    def items_per_step(self, num_workers: int) -> int: ...

    def parts(self, start_step: int, worker: int, num_workers: int) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        ...


class MDSParts:
    """GlobalBatches as a part source: one part per step, steps dealt round-robin to the workers."""

    def __init__(self, batches: GlobalBatches) -> None:
        self.batches = batches

    def items_per_step(self, num_workers: int) -> int:
        return 1

    def parts(self, start_step: int, worker: int, num_workers: int) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        for step in itertools.count(start_step + worker, max(num_workers, 1)):
            if num_workers == 0:  # built in the training process: fetch the next step's shards meanwhile
                self.batches.prefetch(step + 1)
            yield step, {0: self.batches.batch_at(step)}


class _Steps(IterableDataset):
    def __init__(self, source: PartSource, start_step: int) -> None:
        self.source, self.start_step = source, start_step

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 0)
        return self.source.parts(self.start_step, worker, workers)


class StepBatches:
    """`batch_at(step)`: this DP rank's LongTensor [global_batch / dp, L] for `step`.

    Consecutive steps stream from `num_workers` DataLoader worker processes (0 = in this process); a
    jump to another step restarts the stream there, so any step can be asked for at any time.
    """

    def __init__(self, source: PartSource, num_workers: int = 0, prefetch: int = 2) -> None:
        if num_workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {num_workers}")
        self.source, self.num_workers, self.prefetch = source, num_workers, prefetch
        self._items: Iterator[Any] | None = None
        self._next_step = -1

    def _restart(self, step: int) -> None:
        steps = _Steps(self.source, step)
        if self.num_workers == 0:
            self._items = iter(steps)
        else:
            self._items = iter(DataLoader(steps, batch_size=None, num_workers=self.num_workers,
                                          prefetch_factor=self.prefetch, multiprocessing_context="fork"))

    def batch_at(self, step: int) -> torch.Tensor:
        if self._items is None or step != self._next_step:
            self._restart(step)
        parts: dict[int, torch.Tensor] = {}
        for _ in range(self.source.items_per_step(self.num_workers)):
            got, part = next(self._items)
            if got != step:
                raise RuntimeError(f"data workers delivered step {got} while step {step} was expected")
            parts.update(part)
        self._next_step = step + 1
        return torch.cat([torch.as_tensor(parts[k]) for k in sorted(parts)]).long()

    def close(self) -> None:
        self._items = None  # a DataLoader iterator shuts its workers down when dropped


class BlockArray:
    """In-memory blocks with the random-access interface of loader.BlockDataset (webdataset validation)."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.blocks[i]


def open_splits(data: Any, seq_len: int, vocab_size: int, val_blocks: int) -> tuple[Any, Any]:
    """Check `data` (a DataConfig) and open its train split and validation blocks (for webdataset: the
    first `val_blocks` of the val split, held in memory)."""
    fmt = reader_format(data.format)
    if data.remote:
        from dsl_scale.data.loader import fetch_manifest

        fetch_manifest(data.remote, data.path)
    check_data(data, seq_len, vocab_size, fmt)
    check = data.check_hashes
    if fmt == "mds":
        return (open_shards(data.path, "train", data.remote, check),
                open_shards(data.path, "val", data.remote, check))
    val = WdsSplit(data.path, "val", data.remote, check)
    return WdsSplit(data.path, "train", data.remote, check), BlockArray(val.head(val_blocks))


def node_share() -> tuple[int, int]:
    """(this rank's index among the ranks on its host, their number); (0, 1) outside a job."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0, 1
    hosts: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    mine = [r for r, host in enumerate(hosts) if host == hosts[dist.get_rank()]]
    return mine.index(dist.get_rank()), len(mine)


def check_data(data: Any, seq_len: int, vocab_size: int, fmt: str) -> None:
    """`check_manifest` with the shard files shared out among the ranks of each node (so every node checks
    every file once, whether `data.path` is a shared file system or a copy per node); if any rank finds a
    fault, every rank raises it (so none is left waiting in a collective for a rank that stopped)."""
    share = node_share()
    fault: Exception | None = None
    try:
        check_manifest(data.path, seq_len, data.tokenizer, vocab_size, fmt=fmt, remote=data.remote,
                       verify_checksums=data.verify_checksums, share=share)
    except (OSError, ValueError) as err:
        fault = err
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:
        faults: list[tuple[str, str] | None] = [None] * world
        dist.all_gather_object(faults, None if fault is None else (type(fault).__name__, str(fault)))
        found = next(((r, f) for r, f in enumerate(faults) if f is not None), None)
        if fault is None and found is not None:
            at, (kind, message) = found
            raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(f"{message} (found by rank {at})")
    if fault is not None:
        raise fault


def train_batches(train: Any, data: Any, global_batch: int, dp_rank: int, dp_size: int, seed: int) -> StepBatches:
    """The train-batch server for this DP rank over the split `open_splits` returned."""
    if isinstance(train, WdsSplit):
        source: PartSource = WdsBatches(train, global_batch, dp_rank, dp_size, seed, data.streams)
    else:
        source = MDSParts(GlobalBatches(train, global_batch, dp_rank, dp_size, seed))
    return StepBatches(source, data.workers)
