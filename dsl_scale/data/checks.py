"""Checks of a prepared data directory before training starts: manifest vs config, shards present and whole.

Every error names the file at fault. Shard sizes are always compared with the manifest (this catches
missing and truncated shards at the cost of a stat per shard); sha256 checksums only on request
(`verify_checksums`), since hashing reads the whole dataset. In a job, the ranks of a node share the shard
files out (`share=(index on the node, ranks on the node)`: each file is checked once per node), so no rank
stats every shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from dsl_scale.data.writers import FORMATS, MANIFEST_NAME, file_sha256

SPLITS = ("train", "val")
_INDEX_NAME = "index.json"  # written by MDSWriter / merged by prepare in each split directory


def prepare_hint(path: str) -> str:
    return f"run `python tools/prepare_data.py --source wikipedia-sample --out {path} --seq-len L` first"


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of a prepared data directory, with errors that say how to create it."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"data directory {path} does not exist; {prepare_hint(path)}")
    file = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file} is missing (preparation never finished, or this is not a data directory); "
            + prepare_hint(path)
        )
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); {prepare_hint(path)}") from err


def reader_format(fmt: str) -> str:
    """The shard format a run reads for `data.format` (a directory prepared as "both" is read as MDS)."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format={fmt!r} is not one of {sorted(FORMATS)}")
    return "mds" if fmt == "both" else fmt


def check_manifest(
    path: str, seq_len: int, tokenizer: str, vocab_size: int, splits: Sequence[str] = SPLITS,
    fmt: str = "mds", remote: str = "", verify_checksums: bool = False, share: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Check a data directory against the run's config and that every shard of format `fmt` is complete.

    The manifest is checked in full; of the shard files only every `share[1]`-th from `share[0]` on, so
    that a node's ranks together check each file once. With a `remote`, shards are fetched later by the
    reader, so only the manifest is checked here.
    """
    first, step = share
    if not 0 <= first < step:
        raise ValueError(f"bad check share {share}: want (index, count) with 0 <= index < count")
    manifest = read_manifest(path)
    file = os.path.join(path, MANIFEST_NAME)
    fmt = reader_format(fmt)
    if fmt not in FORMATS.get(manifest.get("format", ""), []):
        raise ValueError(f"{file}: data prepared as format {manifest.get('format')!r} has no {fmt!r} shards; "
                         f"re-run tools/prepare_data.py with --format {fmt} (or both)")
    for key, wanted in (("seq_len", seq_len), ("tokenizer", tokenizer), ("vocab_size", vocab_size)):
        if manifest.get(key) != wanted:
            raise ValueError(
                f"{file}: data was prepared with {key}={manifest.get(key)!r} "
                f"but the config has {key}={wanted!r}; "
                "re-run tools/prepare_data.py to match the config, or point the config at matching data"
            )
    for split in splits:
        recorded = manifest.get("splits", {}).get(split)
        if recorded is None:
            raise ValueError(f"{file} has no {split!r} split")
        if recorded.get("blocks", 0) == 0:
            raise ValueError(f"{split} split in {os.path.join(path, split)} has 0 blocks; " + prepare_hint(path))
        if "shards" not in manifest:  # version 1: MDS only, shards listed by index.json alone
            _check_mds_index(path, split, recorded["blocks"], seq_len, share)
            continue
        shards = manifest["shards"][fmt].get(split, [])
        if sum(s["samples"] for s in shards) != recorded["blocks"]:
            raise ValueError(f"{file}: the {split} {fmt} shards hold {sum(s['samples'] for s in shards)} "
                             f"blocks but the split records {recorded['blocks']}")
        if remote:
            continue
        if fmt == "mds":  # the index's shard files are the manifest's, whose sizes are checked just below
            _check_mds_index(path, split, recorded["blocks"], seq_len, share=None)
        for shard in shards[first::step]:
            check_shard_file(os.path.join(path, shard["file"]), shard, file, verify_checksums)
    return manifest


def check_shard_file(shard_file: str, shard: dict[str, Any], manifest_file: str, verify_checksum: bool) -> None:
    _check_size(shard_file, shard["bytes"], manifest_file)
    if verify_checksum and file_sha256(shard_file) != shard["sha256"]:
        raise ValueError(f"shard file {shard_file} is damaged: its sha256 differs from {manifest_file}")


def _check_size(shard_file: str, expected: int, listed_in: str) -> None:
    if not os.path.isfile(shard_file):
        raise FileNotFoundError(f"shard file {shard_file} listed in {listed_in} is missing")
    size = os.path.getsize(shard_file)
    if size != expected:
        raise ValueError(f"shard file {shard_file} is truncated or damaged: {size} bytes, {listed_in} says {expected}")


def _check_mds_index(path: str, split: str, blocks: int, seq_len: int, share: tuple[int, int] | None) -> None:
    """The split's index.json against the manifest; with a `share`, also the sizes of that share of its shards."""
    index_file = os.path.join(path, split, _INDEX_NAME)
    if not os.path.isfile(index_file):
        raise FileNotFoundError(f"shard index {index_file} is missing; {prepare_hint(path)}")
    with open(index_file, encoding="utf-8") as f:
        shards = json.load(f)["shards"]
    samples = 0
    for i, shard in enumerate(shards):
        info = shard["raw_data"]
        if share is not None and i % share[1] == share[0]:
            _check_size(os.path.join(path, split, info["basename"]), info["bytes"], index_file)
        if shard.get("column_encodings") != [f"ndarray:int32:{seq_len}"]:
            raise ValueError(f"{index_file}: unexpected column encodings {shard.get('column_encodings')}")
        samples += shard["samples"]
    if samples == 0:
        raise ValueError(f"{split} split in {os.path.join(path, split)} has 0 blocks; " + prepare_hint(path))
    if samples != blocks:
        raise ValueError(f"{index_file} holds {samples} blocks but the manifest records {blocks}")
