"""Shard writers for packed token blocks: MDS (mosaicml-streaming) and webdataset tar shards.

`write_group` writes one group of blocks, in one pass, to every writer of the requested format, so "both"
holds the same blocks in the same order. Outputs are byte-reproducible (tar mtimes are fixed), which is
what lets a resumed or parallel preparation produce the same files as a serial one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from dsl_scale.core.files import atomic_open
from dsl_scale.data.shard_hash import file_hashes
from dsl_scale.data.streaming_compat import import_streaming

TOKENS_COLUMN = "tokens"
WDS_EXTENSION = "tokens.npy"  # webdataset sample field: the block as a .npy file
DEFAULT_SHARD_SIZE_BYTES = 1 << 26  # MDS's own default (64 MiB)
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2
_TAR_BLOCK = 512  # tar members: a 512-byte header, then the data padded to 512 bytes


class BlockWriter(Protocol):
    def write(self, block: np.ndarray) -> None: ...

    def close(self) -> list[dict[str, Any]]: ...  # one {"file", "samples"} per shard, file relative to dir


class MDSBlockWriter:
    """One `tokens` column of static shape, `ndarray:int32:<seq_len>`, in `<dir>/shard.*.mds` + index.json."""

    def __init__(self, directory: str, seq_len: int, shard_size_bytes: int) -> None:
        self.directory, self.seq_len = directory, seq_len
        self._writer = import_streaming().MDSWriter(
            out=directory, columns={TOKENS_COLUMN: f"ndarray:int32:{seq_len}"}, size_limit=shard_size_bytes,
        )

    def write(self, block: np.ndarray) -> None:
        _check_block(block, self.seq_len)
        self._writer.write({TOKENS_COLUMN: block})

    def close(self) -> list[dict[str, Any]]:
        self._writer.finish()  # flushes the last shard and writes <dir>/index.json
        with open(os.path.join(self.directory, "index.json"), encoding="utf-8") as f:
            shards = json.load(f)["shards"]
        return [{"file": s["raw_data"]["basename"], "samples": s["samples"]} for s in shards]


class WdsBlockWriter:
    """Tar shards `<dir>/shard-NNNNNN.tar`; sample `<key>.tokens.npy` per block, key = group/position."""

    def __init__(self, directory: str, seq_len: int, shard_size_bytes: int, key_prefix: str = "") -> None:
        import webdataset

        self._webdataset = webdataset
        self.directory, self.seq_len, self.limit = directory, seq_len, shard_size_bytes
        self.key_prefix = key_prefix
        self._shards: list[dict[str, Any]] = []
        self._tar: Any = None
        self._bytes = self._written = 0
        os.makedirs(directory, exist_ok=True)

    def write(self, block: np.ndarray) -> None:
        _check_block(block, self.seq_len)
        payload = io.BytesIO()
        np.save(payload, block, allow_pickle=False)
        data = payload.getvalue()
        size = _TAR_BLOCK + -(-len(data) // _TAR_BLOCK) * _TAR_BLOCK
        if self._tar is not None and self._bytes + size + 2 * _TAR_BLOCK > self.limit:  # + end-of-archive
            self._finish_shard()
        if self._tar is None:
            name = f"shard-{len(self._shards):06d}.tar"
            self._tar = self._webdataset.TarWriter(os.path.join(self.directory, name), mtime=0.0)
            self._shards.append({"file": name, "samples": 0})
            self._bytes = 0
        self._tar.write({"__key__": f"{self.key_prefix}{self._written:09d}", WDS_EXTENSION: data})
        self._bytes += size
        self._shards[-1]["samples"] += 1
        self._written += 1

    def _finish_shard(self) -> None:
        self._tar.close()
        self._tar = None

    def close(self) -> list[dict[str, Any]]:
        if self._tar is not None:
            self._finish_shard()
        return self._shards


def _check_block(block: np.ndarray, seq_len: int) -> None:
    if block.shape != (seq_len,) or block.dtype != np.int32:
        raise ValueError(f"want int32 blocks of length {seq_len}, got {block.dtype}{block.shape}")


WRITERS: dict[str, Callable[..., BlockWriter]] = {"mds": MDSBlockWriter, "wds": WdsBlockWriter}
WRITER_SUBDIRS = {"mds": "", "wds": "wds"}  # inside a group's directory
# --format value -> the writers it runs, in a fixed order.
FORMATS: dict[str, list[str]] = {"mds": ["mds"], "wds": ["wds"], "both": ["mds", "wds"]}


def import_writer_libraries(fmt: str) -> None:
    """Import the libraries of `fmt` once (seconds for streaming), before forking worker processes."""
    if "mds" in FORMATS[fmt]:
        import_streaming()
    if "wds" in FORMATS[fmt]:
        import webdataset  # noqa: F401


def write_group(
    blocks: Iterable[np.ndarray], directory: str, seq_len: int, fmt: str, shard_size_bytes: int, key_prefix: str
) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Write `blocks` to the shards of every writer of `fmt` under `directory`.

    Returns the block count and, per format, the shards written: {"file" (relative to `directory`),
    "samples", "bytes", "sha256", "xxh3_64"} (the fast hash that readers check on a shard's first read).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown shard format {fmt!r}; choices: {', '.join(sorted(FORMATS))}")
    writers = {}
    for name in FORMATS[fmt]:
        sub = os.path.join(directory, WRITER_SUBDIRS[name])
        extra = {"key_prefix": key_prefix} if name == "wds" else {}
        writers[name] = WRITERS[name](sub, seq_len, shard_size_bytes, **extra)
    count = 0
    for block in blocks:
        for writer in writers.values():
            writer.write(block)
        count += 1
    shards: dict[str, list[dict[str, Any]]] = {}
    for name, writer in writers.items():
        shards[name] = []
        for shard in writer.close():
            rel = os.path.join(WRITER_SUBDIRS[name], shard["file"]) if WRITER_SUBDIRS[name] else shard["file"]
            path = os.path.join(directory, rel)
            shards[name].append({"file": rel, "samples": shard["samples"], "bytes": os.path.getsize(path),
                                 **file_hashes(path)})
    return count, shards


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            digest.update(data)
    return digest.hexdigest()


def write_json_atomic(path: str, data: dict[str, Any]) -> str:
    """Write JSON through a tmp file + os.replace, so readers never see half a file."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def write_manifest(out: str, manifest: dict[str, Any]) -> str:
    """Write `<out>/manifest.json` atomically; call it after all shards exist."""
    return write_json_atomic(os.path.join(out, MANIFEST_NAME), manifest)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
