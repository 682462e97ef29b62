"""Atomic file writes: readers see the old file or the whole new one, never half of one.

Every writer goes through a temporary name beside the target (same filesystem, so the final rename is
atomic), flushed and fsynced before it replaces the target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name (safetensors, numpy); it replaces `path` when
    the block succeeds and is removed when it fails."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file opened for writing under a temporary name; it replaces `path` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_directory(dst: str | Path, exist_ok: bool = False) -> Iterator[Path]:
    """A temporary directory beside `dst`, renamed to `dst` only when the block succeeds. An existing `dst`
    is an error (nothing is written) unless `exist_ok`, when it is replaced by the new one."""
    dst = Path(dst)
    if dst.exists() and not exist_ok:
        raise FileExistsError(f"{dst} already exists; choose a new destination (nothing was written)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
