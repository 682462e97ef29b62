"""Shard writers for packed token blocks, behind a format-agnostic interface.

`write_split` consumes a block iterator once and fans it out to the writers of the requested format
(today only MDS; a webdataset writer registers in `WRITERS` and "both" in `FORMATS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from dsl_scale.data.streaming_compat import import_streaming

TOKENS_COLUMN = "tokens"
DEFAULT_SHARD_SIZE_BYTES = 1 << 26  # MDS's own default (64 MiB)
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class BlockWriter(Protocol):
    def write(self, block: np.ndarray) -> None: ...

    def close(self) -> None: ...


class MDSBlockWriter:
    """One `tokens` column of static shape, `ndarray:int32:<seq_len>`, in `<out>/<split>/shard.*.mds`."""

    def __init__(self, out: str, split: str, seq_len: int, shard_size_bytes: int) -> None:
        streaming = import_streaming()
        self.seq_len = seq_len
        self._writer = streaming.MDSWriter(
            out=os.path.join(out, split),
            columns={TOKENS_COLUMN: f"ndarray:int32:{seq_len}"},
            size_limit=shard_size_bytes,
        )

    def write(self, block: np.ndarray) -> None:
        if block.shape != (self.seq_len,) or block.dtype != np.int32:
            raise ValueError(f"want int32 blocks of length {self.seq_len}, got {block.dtype}{block.shape}")
        self._writer.write({TOKENS_COLUMN: block})

    def close(self) -> None:
        self._writer.finish()  # flushes the last shard and writes <split>/index.json


WRITERS: dict[str, Callable[[str, str, int, int], BlockWriter]] = {"mds": MDSBlockWriter}
# --format value -> the writers it runs (a later "both" maps to ["mds", "wds"]).
FORMATS: dict[str, list[str]] = {"mds": ["mds"]}


def write_split(
    blocks: Iterable[np.ndarray],
    out: str,
    split: str,
    seq_len: int,
    fmt: str = "mds",
    shard_size_bytes: int = DEFAULT_SHARD_SIZE_BYTES,
) -> int:
    """Write every block to the shards of `split` under `out` in format `fmt`; return the block count."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown shard format {fmt!r}; choices: {', '.join(sorted(FORMATS))}")
    writers = [WRITERS[name](out, split, seq_len, shard_size_bytes) for name in FORMATS[fmt]]
    count = 0
    for block in blocks:
        for writer in writers:
            writer.write(block)
        count += 1
    for writer in writers:
        writer.close()
    return count


def write_manifest(out: str, manifest: dict[str, Any]) -> str:
    """Write `<out>/manifest.json` atomically (tmp file + os.replace); call it after all shards exist."""
    path = os.path.join(out, MANIFEST_NAME)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
