"""Saves that fail cleanly: a full disk, a quota or an I/O error while a checkpoint is written stops the run
(or, with `train.on_save_error=continue`, skips that save) with a message naming the file, the bytes the last
checkpoint took and the bytes free, and the half-written tag directory is removed; `latest` keeps naming the
last whole checkpoint.

A rank that fails to write must not leave the collectives of the save: DeepSpeed's `save_checkpoint` has
barriers between its files, and a rank that raised out of it would leave the others waiting there. So every
file DeepSpeed writes goes through its checkpoint engine's `save`, which the guard wraps: a failure is
recorded (and the rank's remaining files skipped) instead of raised, and the ranks compare their records
once, at one fixed point after all writes and before `latest` is replaced (`agree`). Before writing, rank 0
compares the free space with the previous checkpoint's size (`begin`), so a disk too full for another
checkpoint is found before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

POLICIES = ("stop", "continue")


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (the run stops; `latest` still names the last whole checkpoint)."""


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(folder, name))
    return total


def free_bytes(path: Path) -> int:
    """Bytes free to this user on the file system of `path` (or of its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _describe_error(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{'no space left' if err.errno == errno.ENOSPC else 'disk quota exceeded'} ({err.strerror})"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()


def _broadcast(value: object) -> object:
    box = [value]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


class SaveGuard:
    """One per run: `begin` before a save, `recording` around the run's own files, `agree` before `latest`."""

    def __init__(self, root: str | Path, policy: str = "stop", check_lock=None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"train.on_save_error={policy!r} is not one of {list(POLICIES)}")
        self.root, self.policy = Path(root), policy
        self.check_lock = check_lock  # rank 0: raises when another run took the run directory over
        self._failure: tuple[str, str] | None = None  # (file, what went wrong) on this rank
        self._needed = self._free = 0
        self._tag_dir: Path | None = None
        self._previous: str | None = None

    # ------------------------------------------------------------------------------------------------
    def install(self, engine) -> None:
        """Route every file DeepSpeed writes for a save through this guard (a later guard replaces an earlier)."""
        ckpt = engine.checkpoint_engine
        if getattr(ckpt, "_dsl_save_guard", None) is self:
            return
        write = getattr(ckpt, "_dsl_unguarded_save", None) or ckpt.save
        ckpt._dsl_unguarded_save, ckpt._dsl_save_guard = write, self

        def save(state_dict, path: str) -> None:
            if self._failure is not None:  # this rank's save already failed: the rest would only fill the disk
                return
            try:
                write(state_dict, path)
            except (OSError, RuntimeError) as err:  # torch's file writer raises RuntimeError on a full disk
                self._failure = (str(path), _describe_error(err))

        ckpt.save = save

    def begin(self, step: int, tag_dir: Path, previous: str | None) -> bool:
        """Every rank, before the save of `step` into `tag_dir` (`previous`: the tag `latest` names). False: skip
        this save (on_save_error=continue and too little space); raises SaveFailed on every rank to stop."""
        self._failure, self._tag_dir, self._previous = None, tag_dir, previous
        decision = None
        if not dist.is_initialized() or dist.get_rank() == 0:
            try:
                if self.check_lock is not None:
                    self.check_lock()
                self._needed = tree_bytes(self.root / previous) if previous else 0
                self._free = free_bytes(self.root)
                decision = ("ok", self._needed, self._free)
                if self._needed > self._free:
                    decision = ("space", self._needed, self._free)
            except Exception as err:  # noqa: BLE001  (every rank must hear of it, whatever it is)
                decision = ("error", f"{type(err).__name__}: {err}", 0)
        kind, self._needed, self._free = _broadcast(decision)
        if kind == "error":
            raise SaveFailed(f"checkpoint of step {step} not saved: {self._needed}")
        if kind == "space":
            message = (f"checkpoint of step {step} not saved: {self.root} has {self._free:,} bytes free, the last "
                       f"checkpoint ({previous}) took {self._needed:,} bytes; nothing was written and `latest` "
                       f"still names {previous}; free some space (or lower train.keep_checkpoints)")
            return self._fail(message)
        return True

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Around the run's own files of a save (no collective inside): a write error is recorded, not raised."""
        try:
            yield
        except (OSError, RuntimeError) as err:
            if self._failure is None:  # the first failure is the one to report (the others follow from it)
                filename = getattr(err, "filename", None) or "a file of the run"
                self._failure = (str(filename), _describe_error(err))

    def agree(self, step: int) -> bool:
        """Every rank, after all writes of the save: True when every rank wrote its files. Otherwise rank 0
        removes the partial tag directory and every rank raises SaveFailed (or returns False to continue)."""
        failures: list[tuple[str, str] | None] = [self._failure]
        if dist.is_initialized() and dist.get_world_size() > 1:
            failures = [None] * dist.get_world_size()
            dist.all_gather_object(failures, self._failure)
        found = [(rank, f) for rank, f in enumerate(failures) if f is not None]
        if not found:
            return True
        rank, (file, what) = found[0]
        free = free_bytes(self.root)  # before the partial tag goes: the space there was when the write failed
        written = tree_bytes(self._tag_dir) if self._tag_dir is not None else 0
        removed = "kept (it is the one `latest` names)"
        if self._tag_dir is not None and self._tag_dir.name != self._previous:
            if not dist.is_initialized() or dist.get_rank() == 0:
                shutil.rmtree(self._tag_dir, ignore_errors=True)
            removed = "removed"
            if dist.is_initialized():
                dist.barrier()
        if free < max(self._needed, 1 << 20) and "no space" not in what:  # torch's writer hides the errno
            what += " (the file system is full)"
        needed = (f"the last checkpoint took {self._needed:,} bytes" if self._needed
                  else f"the first checkpoint had reached {written:,} bytes")
        message = (f"checkpoint of step {step} not saved: rank {rank} could not write {file}: {what}; {needed}, "
                   f"{free:,} bytes were free on {self.root}; the partial {self._tag_dir} was {removed}, `latest` "
                   f"still names {self._previous or 'no checkpoint'}")
        return self._fail(message)

    def _fail(self, message: str) -> bool:
        self._failure = None
        if self.policy == "stop":
            raise SaveFailed(message + " (train.on_save_error=continue trains on until the next save)")
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"[dsl_scale] warning: {message}; training on (train.on_save_error=continue)", flush=True)
        return False
