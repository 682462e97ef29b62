"""samples.jsonl on disk: per-rank part files written as batches finish, resume, and the final merge.

A killed job loses at most the batches in flight: each rank appends finished samples to
`OUT.parts/rank{r}.jsonl` and flushes; only newline-terminated lines count, so a line cut by a kill
is dropped (and its sample redone). The merge writes OUT sorted by index, atomically, then deletes
the parts; samples found in both (a kill between the two) are counted once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dsl_scale.core.files import atomic_write_text

IDENTITY_KEYS = ("checkpoint_dir", "weights_loaded", "sampler", "steps", "seed", "top_p", "seq_len",
                 "batch_invariant", "precision", "device")  # device: CUDA generators draw other numbers


def settings_path(out: Path) -> Path:
    return Path(f"{out}.settings.json")


def parts_dir(out: Path) -> Path:
    return Path(f"{out}.parts")


def read_complete_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def drop_partial_tail(path: Path) -> None:
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)


def collect(out: Path, repair: bool = False) -> dict[int, dict]:
    """Every finished sample of OUT and its part files, by index. With `repair`, cut partial tails."""
    files = [out, *sorted(parts_dir(out).glob("rank*.jsonl"))] if parts_dir(out).is_dir() else [out]
    found: dict[int, dict] = {}
    for path in files:
        if repair and path.exists():
            drop_partial_tail(path)
        for record in read_complete_lines(path):
            found.setdefault(int(record["index"]), record)
    return found


def check_resumable(out: Path, identity: dict) -> None:
    """Samples already in OUT (or its parts) must come from the same settings, else refuse to mix."""
    if not collect(out):
        return
    path = settings_path(out)
    saved = json.loads(path.read_text()) if path.exists() else {}
    differing = [k for k in IDENTITY_KEYS if saved.get(k) != identity.get(k)]
    if differing:
        raise ValueError(
            f"{out} already holds samples made with other settings ({', '.join(differing)} differ; see "
            f"{path}); delete it and {parts_dir(out)} or choose another out="
        )


class PartWriter:
    """Appends one rank's finished samples to its part file, flushed to disk per batch."""

    def __init__(self, out: Path, rank: int):
        parts_dir(out).mkdir(parents=True, exist_ok=True)
        self.path = parts_dir(out) / f"rank{rank:05d}.jsonl"

    def write(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def merge(out: Path) -> list[dict]:
    """Writes OUT sorted by index (atomically) from OUT and the parts; removes the parts."""
    records = [r for _, r in sorted(collect(out).items())]
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    return records
