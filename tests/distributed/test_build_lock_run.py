"""A stale JIT-build lock (left by a process killed while DeepSpeed built its CPU op) is reported with its path
and age within seconds, and the run gives up with a clear message, instead of waiting silently forever."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from tests.launching import command, env, micro_run


def test_a_run_reports_a_stale_build_lock_and_gives_up(tmp_path: Path):
    extensions = tmp_path / "extensions"
    lock = extensions / "deepspeed_shm_comm" / "lock"  # torch's layout under $TORCH_EXTENSIONS_DIR
    lock.parent.mkdir(parents=True)
    lock.touch()
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    run_env = {**env(), "TORCH_EXTENSIONS_DIR": str(extensions), "DSL_SCALE_BUILD_LOCK_WARN_S": "2",
               "DSL_SCALE_BUILD_LOCK_TIMEOUT_S": "8"}
    started = time.monotonic()
    # the run stops at the lock, before it would look at its (missing) data
    proc = subprocess.Popen(command("python", "pretrain.py", 1, micro_run(tmp_path / "no-data", tmp_path / "run", 2)),
                            env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic() - started, ln) for ln in proc.stderr))
    reader.start()
    try:
        proc.wait(timeout=120)
    finally:
        proc.kill()
        reader.join()
    text = "".join(ln for _, ln in lines)
    warned = [t for t, ln in lines if "waiting for the extension build lock" in ln and str(lock) in ln]
    assert warned, text[-3000:]
    assert warned[0] < 30, f"reported only after {warned[0]:.0f} s"
    assert "the lock is 36" in text  # its age, ~3600 s
    assert proc.returncode != 0
    assert f"gave up after 8 s waiting for the extension build lock {lock}" in text and f"rm {lock}" in text
