"""A W&B run (offline mode: local files only) killed mid-training and started again continues the same W&B
run id; the resumed run also writes the profiler trace train.profile_steps asks for."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.launching import micro_run, read_jsonl, run, start

pytest.importorskip("wandb")


@pytest.mark.slow  # two runs and a kill, ~35 s on 2 cores; W&B is an optional extra
def test_an_offline_wandb_run_killed_and_resumed_keeps_its_run_id(wiki_shards: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    wandb = {"logging.wandb.enabled": "true", "logging.wandb.project": "dsl-test"}
    first = start("python", "pretrain.py", 1, micro_run(wiki_shards, run_dir, 10_000, **wandb,
                                                         **{"train.save_every": 3}))
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "latest").exists():
            assert first.poll() is None, "the first run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole session: the launcher and W&B's service process
        first.wait()
    run_id = json.loads((run_dir / "wandb.json").read_text())["id"]
    killed_at = max(r["step"] for r in read_jsonl(run_dir / "metrics.jsonl"))

    out = run("python", "pretrain.py", 1, micro_run(wiki_shards, run_dir, killed_at + 4, **wandb,
                                                    **{"train.profile_steps": f"[{killed_at + 2},{killed_at + 3}]"}))
    assert "resumed from" in out.stdout
    assert json.loads((run_dir / "wandb.json").read_text())["id"] == run_id
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) >= 2 and all(r.name.endswith(f"-{run_id}") for r in runs), runs
    assert (runs[-1] / f"run-{run_id}.wandb").stat().st_size > 0
    assert list((run_dir / "profile").glob("rank0*.pt.trace.json"))
