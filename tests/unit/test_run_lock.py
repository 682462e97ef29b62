"""The run-directory lock's rules, with real processes as holders (alive, killed) and records as another host
or a SLURM job would leave them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsl_scale.checkpoint.run_lock import LOCK_NAME, RunDirectoryInUse, RunLock

HOLD = """
import sys, time
from dsl_scale.checkpoint.run_lock import RunLock
lock = RunLock(sys.argv[1], lease_s=float(sys.argv[2]))
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
"""


def _holder(run_dir: Path, lease_s: float = 60.0, seconds: float = 60.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(lease_s), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _record(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": "gpu-node-17", "pid": 4242, "pid_start": "1", "slurm_job_id": "", "started": "earlier",
              "token": "theirs", "renewed": time.time(), "lease_s": 60.0, **fields}
    (run_dir / LOCK_NAME).write_text(json.dumps(record))


def test_the_lock_names_its_holder_and_goes_at_release(tmp_path: Path):
    lock = RunLock(tmp_path / "run")
    assert lock.acquire() is None
    record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid() and "started" in record
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_second_process_is_refused_while_the_holder_lives_and_takes_over_once_it_is_killed(tmp_path: Path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunDirectoryInUse, match=rf"is held by pid {holder.pid} on {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # kill -9 leaves the lock behind
    lock = RunLock(tmp_path)
    assert "its process is gone" in lock.acquire()
    lock.release()


def test_a_holder_that_ends_removes_its_lock(tmp_path: Path):
    holder = _holder(tmp_path, seconds=0.0)
    assert holder.wait(timeout=30) == 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_another_hosts_lock_is_taken_over_only_when_its_lease_ran_out(tmp_path: Path):
    _record(tmp_path, renewed=time.time() - 5)
    with pytest.raises(RunDirectoryInUse, match="held by pid 4242 on gpu-node-17"):
        RunLock(tmp_path, lease_s=60).acquire()
    _record(tmp_path, renewed=time.time() - 120)
    lock = RunLock(tmp_path, lease_s=60)
    assert "lease ran out" in lock.acquire()
    lock.release()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _record(tmp_path, slurm_job_id="918273")
    monkeypatch.setenv("SLURM_JOB_ID", "918274")
    with pytest.raises(RunDirectoryInUse, match="SLURM job 918273"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "918273")
    lock = RunLock(tmp_path)
    assert "SLURM job 918273 restarted" in lock.acquire()
    lock.release()


def test_a_reused_pid_does_not_keep_a_dead_holders_lock(tmp_path: Path):
    _record(tmp_path, host=socket.gethostname(), pid=os.getppid(), pid_start="not its start time")
    lock = RunLock(tmp_path)
    assert "its process is gone" in lock.acquire()
    lock.release()


def test_the_holder_renews_its_lease_and_notices_a_takeover(tmp_path: Path):
    lock = RunLock(tmp_path, lease_s=0.5)
    lock.acquire()
    first = json.loads((tmp_path / LOCK_NAME).read_text())["renewed"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["renewed"] > first
    lock.check()
    _record(tmp_path)  # someone else's lock now
    with pytest.raises(RunDirectoryInUse, match="was taken over by pid 4242 on gpu-node-17"):
        lock.check()
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()  # not ours: left alone
    (tmp_path / LOCK_NAME).unlink()


def test_a_holder_killed_but_not_yet_reaped_counts_as_gone(tmp_path: Path):
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":  # a zombie until waited
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lock = RunLock(tmp_path)
    assert "its process is gone" in lock.acquire()
    lock.release()
    holder.wait()
