"""Fast shard hashes: the xxh3-64 of every shard file, recorded in the manifest when the shard is written and
checked when a run first reads the shard.

Sizes are compared before training starts (data/checks.py), which misses a shard damaged in place (a bad
disk block, a copy gone wrong, bytes overwritten). sha256 of every shard at start (`data.verify_checksums`)
catches that but reads the whole dataset before the first step. xxh3 reads at memory speed, so each process
hashes a shard the first time it reads from it (a remote shard once it is fetched) and stops with the
shard's name when the hash differs. Each process keeps its own record of the shards it has checked: the
ranks of a node, and their data-loader workers, each check what they read.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import xxhash

FAST_HASH = "xxh3_64"  # the manifest field of each shard
_CHUNK = 1 << 22


def file_hashes(path: str) -> dict[str, str]:
    """{"sha256", "xxh3_64"} of a file, from one read."""
    slow, fast = hashlib.sha256(), xxhash.xxh3_64()
    with open(path, "rb") as f:
        while data := f.read(_CHUNK):
            slow.update(data)
            fast.update(data)
    return {"sha256": slow.hexdigest(), FAST_HASH: fast.hexdigest()}


def fast_hash(path: str) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while data := f.read(_CHUNK):
            digest.update(data)
    return digest.hexdigest()


def fast_hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def damaged(shard_file: str, got: str, want: str, manifest_file: str) -> ValueError:
    return ValueError(
        f"shard file {shard_file} is damaged: its {FAST_HASH} is {got}, but {manifest_file} recorded {want} when it "
        "was written; restore the file or prepare the data again (tools/prepare_data.py --overwrite)"
    )


_warned: set[str] = set()


def note_missing_hashes(manifest_file: str) -> None:
    """One log line per process and manifest (rank 0 only) for data prepared before shards had fast hashes."""
    if manifest_file in _warned:
        return
    _warned.add(manifest_file)
    if os.environ.get("RANK", "0") == "0":
        print(f"[dsl_scale] {manifest_file} records no {FAST_HASH} shard hashes (prepared by an older version): "
              "its shards are checked for size only; prepare the data again to add them, or set "
              "data.verify_checksums=true to sha256 every shard before training", file=sys.stderr, flush=True)


class ShardChecks:
    """The shards of one split in block order, each checked against its recorded hash on its first read.

    `entries`: the manifest's shard list ({"file", "samples", FAST_HASH}), files relative to `root`. With
    `enabled` false, or entries without hashes (older data), nothing is checked."""

    def __init__(self, root: str, entries: Sequence[dict[str, Any]], manifest_file: str, enabled: bool = True):
        self.root, self.manifest_file = root, manifest_file
        self.files = [os.path.join(root, e["file"]) for e in entries]
        self.expected = [e.get(FAST_HASH) for e in entries]
        self._ends = []
        total = 0
        for e in entries:
            total += e["samples"]
            self._ends.append(total)
        hashed = [i for i, want in enumerate(self.expected) if want is not None]
        if enabled and entries and not hashed:
            note_missing_hashes(manifest_file)
        self._unchecked = set(hashed) if enabled else set()

    @property
    def pending(self) -> int:
        """How many shards are still to be checked (0: reads cost nothing more)."""
        return len(self._unchecked)

    def shard_of(self, block: int) -> int:
        return bisect.bisect_right(self._ends, block)

    def check_block(self, block: int) -> None:
        """Check the shard holding block `block` (in block order) if this process has not yet."""
        if self._unchecked:
            shard = self.shard_of(block)
            if shard in self._unchecked:
                self.check_file(shard)

    def check_file(self, shard: int) -> None:
        got = fast_hash(self.files[shard])
        if got != self.expected[shard]:
            raise damaged(self.files[shard], got, self.expected[shard], self.manifest_file)
        self._unchecked.discard(shard)

    def check_bytes(self, shard: int, data: bytes, name: str = "") -> None:
        """Check shard `shard` from its bytes as read (a stream that cannot be read twice), named `name`."""
        if shard not in self._unchecked:
            return
        got = fast_hash_bytes(data)
        if got != self.expected[shard]:
            raise damaged(name or self.files[shard], got, self.expected[shard], self.manifest_file)
        self._unchecked.discard(shard)

    def needs(self, shard: int) -> bool:
        return shard in self._unchecked
