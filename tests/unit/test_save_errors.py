"""The save guard's rules on real files: a write that runs out of space is recorded (the rank's later files are
skipped), the partial tag is removed with the file, the bytes and the free space named, and a disk too small for
another checkpoint of the last one's size is refused before anything is written. A 1 MiB tmpfs where mount is
allowed (root), else a checkpoint engine that raises ENOSPC part-way through a file."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from dsl_scale.checkpoint.save_guard import SaveFailed, SaveGuard


class TorchFiles:
    """DeepSpeed's checkpoint engine as the guard sees it: every file of a save goes through `save`."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit  # None: the file system's own space decides

    def save(self, state_dict, path: str) -> None:
        if self.limit is None:
            torch.save(state_dict, path)
            return
        with open(path, "wb") as f:
            f.write(b"\0" * self.limit)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class Engine:
    def __init__(self, files: TorchFiles) -> None:
        self.checkpoint_engine = files


@pytest.fixture()
def disk(tmp_path: Path):
    """(checkpoints directory on a 1 MiB disk, the engine writing there)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    root = mount / "checkpoints"
    root.mkdir()
    yield root, Engine(TorchFiles(None if mounted else 512 * 1024))
    if mounted:
        subprocess.run(["umount", str(mount)], check=True)


def _previous(root: Path, size: int) -> str:
    (root / "step_00000001").mkdir()
    (root / "step_00000001" / "model.pt").write_bytes(b"\1" * size)
    (root / "latest").write_text("step_00000001")
    return "step_00000001"


def test_a_write_that_runs_out_of_space_fails_the_save_cleanly(disk):
    root, engine = disk
    previous = _previous(root, 1000)
    guard = SaveGuard(root)
    guard.install(engine)
    tag = root / "step_00000002"
    assert guard.begin(2, tag, previous)
    tag.mkdir()
    engine.checkpoint_engine.save({"w": torch.zeros(1 << 20)}, str(tag / "model_states.pt"))  # 4 MiB: does not fit
    engine.checkpoint_engine.save({"w": torch.zeros(4)}, str(tag / "optim_states.pt"))
    assert not (tag / "optim_states.pt").exists()  # skipped after the failure
    with pytest.raises(SaveFailed, match=rf"rank 0 could not write {tag}/model_states.pt: .*the last checkpoint "
                                         rf"took 1,000 bytes, [\d,]+ bytes were free on {root}; the partial {tag} was "
                                         rf"removed, `latest` still names {previous}"):
        guard.agree(2)
    assert not tag.exists() and (root / previous / "model.pt").exists()
    assert (root / "latest").read_text() == previous


def test_the_run_trains_on_after_a_failed_save_when_asked(disk, capsys):
    root, engine = disk
    guard = SaveGuard(root, "continue")
    guard.install(engine)
    tag = root / "step_00000002"
    assert guard.begin(2, tag, None)
    tag.mkdir()
    engine.checkpoint_engine.save({"w": torch.zeros(1 << 20)}, str(tag / "model_states.pt"))
    assert guard.agree(2) is False
    assert "training on (train.on_save_error=continue)" in capsys.readouterr().out and not tag.exists()
    assert guard.begin(4, root / "step_00000004", None)  # the next save starts clean
    assert guard.agree(4) is True


def test_a_disk_without_room_for_the_last_checkpoints_size_is_refused_before_writing(disk):
    root, engine = disk
    if engine.checkpoint_engine.limit is not None:
        pytest.skip("needs the 1 MiB tmpfs (mount as root): the free-space check reads the real free space")
    previous = _previous(root, 600 * 1024)
    with pytest.raises(SaveFailed, match=r"not saved: .* has [\d,]+ bytes free, the last checkpoint \(step_00000001\) "
                                         r"took 614,400 bytes; nothing was written"):
        SaveGuard(root).begin(2, root / "step_00000002", previous)
    assert SaveGuard(root, "continue").begin(2, root / "step_00000002", previous) is False
    assert not (root / "step_00000002").exists()
