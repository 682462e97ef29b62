"""No silent hang at a JIT extension build: DeepSpeed's CPU communication op is compiled by torch's
cpp_extension, which takes a lock file in its build directory and, when the lock is there, waits for it to go
away, without a word and without a bound. A process killed during a build (a timeout, `scancel`) leaves the
lock behind, and every later run then waits forever.

`reported_build_waits()` wraps the code that may build: after `warn_after` seconds of waiting at a lock it says
which lock and how old it is, and after `give_up_after` seconds it stops the wait with an error saying how to
clear it. `extensions_dir()` is the build root; inside a virtualenv it is the venv's own `torch_extensions/`
(tools/setup.sh builds the op there and sets TORCH_EXTENSIONS_DIR for the venv's interpreters), so venvs at
different paths do not share, or rebuild each other's, builds.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

WARN_AFTER_ENV = "DSL_SCALE_BUILD_LOCK_WARN_S"
GIVE_UP_AFTER_ENV = "DSL_SCALE_BUILD_LOCK_TIMEOUT_S"
DEFAULT_WARN_AFTER_S = 5.0
DEFAULT_GIVE_UP_AFTER_S = 900.0  # a cold build of the CPU op takes about a minute on 2 cores


class BuildLockTimeout(RuntimeError):
    pass


def extensions_dir() -> Path:
    """Where torch builds JIT extensions: $TORCH_EXTENSIONS_DIR; else, in a virtualenv, the venv's own
    `torch_extensions/` (set in the environment here, so that torch and every child process use it); else
    torch's default, ~/.cache/torch_extensions."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if sys.prefix != sys.base_prefix:
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    return Path(os.path.expanduser("~")) / ".cache" / "torch_extensions"


def build_locks(root: Path) -> list[Path]:
    """The lock files of builds under `root`: <root>/<extension>/lock under $TORCH_EXTENSIONS_DIR, and
    <root>/<python and CUDA tag>/<extension>/lock under torch's default root."""
    return sorted([*root.glob("*/lock"), *root.glob("*/*/lock")])


def _age_s(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return None


def _seconds(env: str, default: float) -> float:
    value = os.environ.get(env, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{env}={value!r} is not a number of seconds") from None


@contextlib.contextmanager
def reported_build_waits(warn_after: float | None = None, give_up_after: float | None = None,
                         poll_s: float = 0.5, say=None) -> Iterator[None]:
    """Run the body (which may JIT-build an extension) with a watchdog on the build locks: a lock that stays
    `warn_after` s while the body runs is reported with its path and age (once, then every minute), and after
    `give_up_after` s the body is interrupted and BuildLockTimeout raised. Bounds default to
    $DSL_SCALE_BUILD_LOCK_WARN_S / $DSL_SCALE_BUILD_LOCK_TIMEOUT_S (5 s / 900 s). Main thread only."""
    warn_after = _seconds(WARN_AFTER_ENV, DEFAULT_WARN_AFTER_S) if warn_after is None else warn_after
    give_up_after = _seconds(GIVE_UP_AFTER_ENV, DEFAULT_GIVE_UP_AFTER_S) if give_up_after is None else give_up_after
    say = say or (lambda message: print(f"[dsl_scale] {message}", file=sys.stderr, flush=True))
    root = extensions_dir()
    done = threading.Event()
    timed_out: list[Path] = []
    main = threading.main_thread() is threading.current_thread()

    def watch() -> None:
        seen: dict[Path, float] = {}  # lock -> when this process first saw it
        reported: dict[Path, float] = {}
        while not done.wait(poll_s):
            now = time.monotonic()
            locks = build_locks(root)
            seen = {lock: seen.get(lock, now) for lock in locks}
            for lock, since in seen.items():
                waited = now - since
                age = _age_s(lock)
                if age is None:
                    continue
                if waited >= give_up_after:
                    timed_out.append(lock)
                    if main and not done.is_set():
                        _thread.interrupt_main()
                    return
                if waited >= warn_after and now - reported.get(lock, -1e9) >= 60:
                    reported[lock] = now
                    say(f"waiting for the extension build lock {lock} (the lock is {age:.0f} s old; waited "
                        f"{waited:.0f} s): another process is building it, or a build was killed and left the "
                        f"lock; if no build is running (`ps aux | grep -e ninja -e c++`), remove the lock. "
                        f"Giving up after {give_up_after:.0f} s (${GIVE_UP_AFTER_ENV}).")

    watcher = threading.Thread(target=watch, name="dsl-build-lock-watch", daemon=True)
    watcher.start()
    try:
        yield
    except KeyboardInterrupt:
        if not timed_out:
            raise
        lock = timed_out[0]
        raise BuildLockTimeout(
            f"gave up after {give_up_after:.0f} s waiting for the extension build lock {lock} (the lock is "
            f"{_age_s(lock) or 0:.0f} s old): a build killed part-way leaves it behind; if no build is running, "
            f"remove it (rm {lock}) and start again") from None
    finally:
        done.set()
        watcher.join()
