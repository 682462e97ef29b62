"""The run directory is safe: a second run on it is refused while the first trains, and a checkpoint that does
not fit on the disk fails cleanly (real runs; a real small tmpfs where it can be mounted, else a torch.save that
fills up part-way through a file)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dsl_scale.checkpoint.run_lock import LOCK_NAME, RunLock
from tests.launching import REPO, command, env, micro_run, read_jsonl

pytestmark = pytest.mark.distributed

CHECKPOINT_BYTES = 39_691_198  # about one micro checkpoint at L = 64 (fp32 weights and AdamW moments, no EMA)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_second_run_on_a_busy_run_dir_is_refused_naming_the_holder(wiki_shards, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(command("python", "pretrain.py", 1, micro_run(wiki_shards, run, 5000)), env=env(),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) >= 1 or first.poll() is not None, 240,
                  "the first run to train")
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run(command("torchrun", "pretrain.py", 2, micro_run(wiki_shards, run, 5000)), env=env(),
                                cwd=REPO, capture_output=True, text=True, timeout=240)
        assert second.returncode != 0
        out = second.stdout + second.stderr
        assert f"is held by pid {first.pid} on {socket.gethostname()}" in out, out[-3000:]
        assert first.poll() is None, "the first run must train on"
        assert sorted(p.name for p in run.glob("config.*.yaml")) == ["config.0.yaml"]  # the second wrote nothing
        steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
        assert steps == sorted(set(steps))
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    lock = RunLock(run)  # kill -9 left the lock: a new holder takes it over, then leaves none behind
    assert "its process is gone" in lock.acquire()
    lock.release()
    assert not (run / LOCK_NAME).exists()


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A directory on a tmpfs of a given size (root only), unmounted afterwards; None where mount fails."""
    mounted: list[Path] = []

    def make(size: int) -> Path | None:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
        if done.returncode != 0:
            return None
        mounted.append(disk)
        return disk

    yield make
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=True)


def _train(data: Path, run: Path, steps: int, extra_env: dict | None = None,
           **overrides) -> subprocess.CompletedProcess:
    settings = {"train.save_every": 2, "train.log_every": 100, **overrides}
    return subprocess.run(command("python", "pretrain.py", 1, micro_run(data, run, steps, **settings)),
                          env={**env(), **(extra_env or {})}, cwd=REPO, capture_output=True, text=True, timeout=300)


def _tags(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step_*"))


def test_a_disk_that_fills_during_a_save_stops_the_run_naming_the_file(wiki_shards, tmp_path, small_disk):
    disk = small_disk(CHECKPOINT_BYTES // 2)
    extra = None
    if disk is None:  # no mount: torch.save runs out of room half-way through the checkpoint instead
        disk = tmp_path / "disk"
        extra = {"PYTHONPATH": str(Path(__file__).parent / "disk_limit"),
                 "DSL_TEST_DISK_LIMIT": f"{disk}:{CHECKPOINT_BYTES // 2}"}
    run = disk / "run"
    done = _train(wiki_shards, run, 2, extra)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "SaveFailed: checkpoint of step 2 not saved: rank 0 could not write " in out, out[-3000:]
    assert f"{run / 'checkpoints' / 'step_00000002'}/" in out  # the file that failed is named
    assert "bytes were free on" in out and "was removed" in out
    assert _tags(run) == [] and not (run / "checkpoints" / "latest").exists()
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_disk_too_small_for_the_next_checkpoint_is_found_before_writing(wiki_shards, small_disk):
    disk = small_disk(CHECKPOINT_BYTES * 3 // 2)
    if disk is None:
        pytest.skip("needs a small tmpfs (mount as root): the free-space check reads the real free space")
    run = disk / "run"
    done = _train(wiki_shards, run, 6, **{"train.on_save_error": "continue"})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert out.count("checkpoint of step 4 not saved") == 1 and "checkpoint of step 6 not saved" in out
    assert re.search(r"has [\d,]+ bytes free, the last checkpoint \(step_00000002\) took [\d,]+ bytes", out)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 7))  # trained on
    assert _tags(run) == ["step_00000002"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not (run / LOCK_NAME).exists()
