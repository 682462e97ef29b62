"""Reading prepared shards for training: validation of the data dir, and deterministic global batches.

Batches are a pure function of (seed, step, global_batch): global sample position c = step * global_batch + j
lies in epoch e = c // N and picks block perm_e[c % N], perm_e a seeded permutation of the N blocks. DP
rank r takes the contiguous slice j in [r * gb / dp, (r + 1) * gb / dp). Resuming at step k is just
`start_step=k`, and the global batch of a step does not depend on the DP size.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from dsl_scale.data.streaming_compat import import_streaming
from dsl_scale.data.writers import MANIFEST_NAME, TOKENS_COLUMN

SPLITS = ("train", "val")
_INDEX_NAME = "index.json"  # written by MDSWriter in each split directory


class Blocks(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...


def _prepare_hint(path: str) -> str:
    return f"run `python tools/prepare_data.py --source wikipedia-sample --out {path} --seq-len L` first"


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of a prepared data directory, with errors that say how to create it."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"data directory {path} does not exist; {_prepare_hint(path)}")
    file = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file} is missing (preparation never finished, or this is not a data directory); "
            + _prepare_hint(path)
        )
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); {_prepare_hint(path)}") from err


def check_manifest(
    path: str, seq_len: int, tokenizer: str, vocab_size: int, splits: Sequence[str] = SPLITS
) -> dict[str, Any]:
    """Check a data directory against the run's config and that every shard is present and complete."""
    manifest = read_manifest(path)
    file = os.path.join(path, MANIFEST_NAME)
    if manifest.get("format") != "mds":
        raise ValueError(f"{file}: format {manifest.get('format')!r}, but the training loader reads MDS")
    for key, wanted in (("seq_len", seq_len), ("tokenizer", tokenizer), ("vocab_size", vocab_size)):
        if manifest.get(key) != wanted:
            raise ValueError(
                f"{file}: data was prepared with {key}={manifest.get(key)!r} "
                f"but the config has {key}={wanted!r}; "
                "re-run tools/prepare_data.py to match the config, or point the config at matching data"
            )
    for split in splits:
        _check_split(path, split, manifest, seq_len)
    return manifest


def _check_split(path: str, split: str, manifest: dict[str, Any], seq_len: int) -> None:
    recorded = manifest.get("splits", {}).get(split)
    if recorded is None:
        raise ValueError(f"{os.path.join(path, MANIFEST_NAME)} has no {split!r} split")
    index_file = os.path.join(path, split, _INDEX_NAME)
    if not os.path.isfile(index_file):
        raise FileNotFoundError(f"shard index {index_file} is missing; {_prepare_hint(path)}")
    with open(index_file, encoding="utf-8") as f:
        shards = json.load(f)["shards"]
    samples = 0
    for shard in shards:
        info = shard["raw_data"]
        shard_file = os.path.join(path, split, info["basename"])
        if not os.path.isfile(shard_file):
            raise FileNotFoundError(f"shard file {shard_file} listed in {index_file} is missing")
        size = os.path.getsize(shard_file)
        if size != info["bytes"]:
            raise ValueError(
                f"shard file {shard_file} is truncated or damaged: {size} bytes, index says {info['bytes']}"
            )
        if shard.get("column_encodings") != [f"ndarray:int32:{seq_len}"]:
            raise ValueError(f"{index_file}: unexpected column encodings {shard.get('column_encodings')}")
        samples += shard["samples"]
    if samples == 0:
        raise ValueError(f"{split} split in {os.path.join(path, split)} has 0 blocks; " + _prepare_hint(path))
    if samples != recorded["blocks"]:
        raise ValueError(f"{index_file} holds {samples} blocks but the manifest records {recorded['blocks']}")


class BlockDataset:
    """Random access to the packed blocks of one split (int32 arrays of length seq_len)."""

    def __init__(self, path: str, split: str) -> None:
        self.manifest = read_manifest(path)
        if split not in self.manifest.get("splits", {}):
            raise ValueError(f"{os.path.join(path, MANIFEST_NAME)} has no {split!r} split")
        self.path, self.split = path, split
        self.seq_len: int = self.manifest["seq_len"]
        self._ds = import_streaming().LocalDataset(local=path, split=split)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks in {self.path}/{self.split}")
        return self._ds[int(i)][TOKENS_COLUMN]

    def __repr__(self) -> str:
        return f"BlockDataset({self.path!r}, {self.split!r}, blocks={len(self)}, seq_len={self.seq_len})"


def open_shards(path: str, split: str) -> BlockDataset:
    return BlockDataset(path, split)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


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
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a step touches at most a couple of epochs (unless gb > N)
                self._perms.pop(min(self._perms))
            self._perms[epoch] = epoch_permutation(self.seed, epoch, len(self.dataset))
        return self._perms[epoch]

    def indices_at(self, step: int) -> np.ndarray:
        """Dataset indices of this rank's slice of step `step`'s global batch."""
        n = len(self.dataset)
        first = step * self.global_batch + self.dp_rank * self.local_batch
        positions = np.arange(first, first + self.local_batch, dtype=np.int64)
        epochs, offsets = positions // n, positions % n
        return np.array([self._perm(int(e))[o] for e, o in zip(epochs, offsets, strict=True)], dtype=np.int64)

    def batch_at(self, step: int) -> torch.Tensor:
        """LongTensor [global_batch / dp_size, seq_len] for `step`."""
        blocks = np.stack([self.dataset[int(i)] for i in self.indices_at(step)])
        return torch.from_numpy(blocks.astype(np.int64))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for step in itertools.count(self.start_step):
            yield self.batch_at(step)
