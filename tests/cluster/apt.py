"""Installing the Debian packages a cluster test needs, when its binaries are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def missing(binaries: Sequence[str]) -> list[str]:
    return [b for b in binaries if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def ensure_packages(binaries: Sequence[str], packages: Sequence[str]) -> None:
    """apt-get install `packages` when any of `binaries` is missing; RuntimeError (with apt's words) on failure."""
    if not missing(binaries):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{missing(binaries)} are missing and apt-get is not usable here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr[-2000:]}")
