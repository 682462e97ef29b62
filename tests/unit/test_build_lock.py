"""The build-lock watchdog (core/build_lock.py): quiet without a lock, a report naming a lock that stays, an
error after the bound; a virtualenv's own extension directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dsl_scale.core import build_lock


def test_the_watchdog_stays_quiet_without_a_lock_and_reports_one_that_appears(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    said: list[str] = []
    with build_lock.reported_build_waits(warn_after=0.3, give_up_after=60, poll_s=0.05, say=said.append):
        time.sleep(0.5)
    assert said == []
    lock = tmp_path / "py311_cpu" / "some_op" / "lock"  # torch's default-root layout is found too
    lock.parent.mkdir(parents=True)
    lock.touch()
    with build_lock.reported_build_waits(warn_after=0.3, give_up_after=60, poll_s=0.05, say=said.append):
        time.sleep(0.8)
    assert len(said) == 1 and str(lock) in said[0]
    with pytest.raises(build_lock.BuildLockTimeout, match="rm .*some_op/lock"):
        with build_lock.reported_build_waits(warn_after=0.1, give_up_after=0.4, poll_s=0.05, say=said.append):
            while lock.exists():  # what torch's FileBaton.wait does
                time.sleep(0.1)


def test_a_virtualenv_gets_its_own_extension_directory(monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "")  # unset, and restored afterwards
    monkeypatch.setattr(build_lock.sys, "prefix", "/some/venv")
    monkeypatch.setattr(build_lock.sys, "base_prefix", "/usr")
    assert build_lock.extensions_dir() == Path("/some/venv/torch_extensions")
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/some/venv/torch_extensions"  # torch and children read it
