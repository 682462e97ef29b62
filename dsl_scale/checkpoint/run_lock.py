"""One writer per run directory: `run_dir/run.lock` names the run that owns it.

Rank 0 takes the lock once the process group exists and before anything is written to the run directory
(the Checkpointer's `start`), and broadcasts the outcome, so that every rank of a refused run stops with the
same message (a lock taken before the process group would leave the other ranks waiting at the rendezvous
for a rank 0 that left).

The lock records the holder's host, pid (and the pid's start time, so a reused pid is not mistaken for the
holder), SLURM job id, start time and when it was last renewed; a thread of the holder renews it every
tenth of the lease. A second run finds it and is refused with the holder named, unless the holder is gone:
  - on this host, its pid no longer runs (or is another process now);
  - on another host, the lease has not been renewed for `lease_s` seconds;
  - it is this SLURM job (a requeued job restarting on the same job id: the old allocation has ended);
  - it is this very process (a second Trainer in one process, as tests make).
A lock taken over is logged as a warning. The holder removes the lock when the run ends (and at exit); a
takeover of a live run's lock (by hand, or by the rules above misjudging) is noticed before each save by
`check`, which stops the old run instead of letting both write.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK_NAME = "run.lock"
DEFAULT_LEASE_S = 600.0


class RunDirectoryInUse(RuntimeError):
    """Another live run holds the run directory."""


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), where /proc has them."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pid_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), where /proc has it."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _pid_runs(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] in ("Z", "X"):  # exited, not reaped yet (a container's init may never reap it)
        return False
    return start is None or len(fields) <= 19 or fields[19] == start


def describe(holder: dict[str, Any]) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    renewed = time.time() - float(holder.get("renewed", 0))
    return (f"pid {holder.get('pid')} on {holder.get('host')}{job}, started {holder.get('started')}, "
            f"lease renewed {renewed:.0f} s ago")


def stale_reason(holder: dict[str, Any], me: dict[str, Any], lease_s: float, now: float) -> str | None:
    """Why the lock of `holder` may be taken over by `me`, or None when its holder must be presumed alive."""
    if all(holder.get(key) == me[key] for key in ("host", "pid", "pid_start")):
        return "held by this process"
    if me["slurm_job_id"] and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return f"SLURM job {me['slurm_job_id']} restarted (requeued)"
    if holder.get("host") == me["host"]:
        if not _pid_runs(int(holder.get("pid", -1)), holder.get("pid_start")):
            return "its process is gone"
        return None
    if now - float(holder.get("renewed", 0)) > lease_s:
        return f"its lease ran out (not renewed for more than {lease_s:.0f} s)"
    return None


class RunLock:
    """The lock of one run directory, held by this process (see the module doc)."""

    def __init__(self, run_dir: str | Path, lease_s: float = DEFAULT_LEASE_S) -> None:
        if lease_s <= 0:
            raise ValueError(f"the run-directory lock's lease must be > 0 s, got {lease_s}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.lease_s = lease_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                   "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
                   "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": os.urandom(8).hex()}
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------------
    def _record(self) -> str:
        return json.dumps({**self.me, "renewed": time.time(), "lease_s": self.lease_s}) + "\n"

    def _write_temporary(self) -> Path:
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.me['host']}.{self.me['pid']}.{self.me['token']}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self._record())
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def read(self) -> dict[str, Any] | None:
        """The current holder's record; None when there is no lock; {} when it cannot be parsed."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _mine(self) -> bool:
        holder = self.read()
        return bool(holder) and holder.get("token") == self.me["token"]

    def acquire(self) -> str | None:
        """Take the lock; returns a warning line when a dead holder's lock was taken over. Raises
        RunDirectoryInUse naming the holder when another live run has it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temporary()
        warning = None
        try:
            try:
                os.link(tmp, self.path)  # atomic, and fails when the lock exists (on NFS too)
            except FileExistsError:
                holder = self.read()
                if holder is None:  # released meanwhile
                    return self.acquire()
                reason = "its record is unreadable" if not holder else stale_reason(holder, self.me, self.lease_s,
                                                                                    time.time())
                if reason is None:
                    raise RunDirectoryInUse(
                        f"run directory {self.run_dir} is in use: {self.path} is held by {describe(holder)}; wait "
                        "for that run to end or stop it, or choose another run_dir (the lock of a run that died is "
                        "taken over automatically)"
                    ) from None
                os.replace(tmp, self.path)
                if not self._mine():  # another starter took it over at the same moment
                    raise RunDirectoryInUse(f"run directory {self.run_dir}: another run took over {self.path} "
                                            f"at the same moment ({describe(self.read() or {})})") from None
                if reason != "held by this process":
                    was = describe(holder) if holder else "an unknown holder"
                    warning = f"took over {self.path} from {was}: {reason}"
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True
        self._thread = threading.Thread(target=self._renew_loop, name="run-lock-lease", daemon=True)
        self._thread.start()
        atexit.register(self.release)
        return warning

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(self.lease_s / 10, 0.05)):
            self.renew()

    def renew(self) -> None:
        """Renew the lease, unless the lock is no longer ours (then `check` reports it)."""
        try:
            if self._mine():
                os.replace(self._write_temporary(), self.path)
        except OSError:  # the directory went away or is unreachable for a moment: the next renewal retries
            pass

    def check(self) -> None:
        """Raise when another run has taken the lock over since this one took it (call before writing)."""
        if self.held and not self._mine():
            raise RunDirectoryInUse(f"{self.path} was taken over by {describe(self.read() or {})}; this run stops "
                                    "without writing, so that one run writes the directory")

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            if self._mine():
                self.path.unlink()
        except OSError:
            pass
        self.held = False
        atexit.unregister(self.release)

