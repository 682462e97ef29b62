"""A training run's log and metrics.jsonl carry what a cluster user watches: wall-clock time, step / total,
step time, ETA, tokens/s, MFU against the device's peak, and peak memory; a time-boxed run says so."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest

from tests.launching import micro_run, read_jsonl, run

LINE = re.compile(r"^\[dsl_scale\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) step (\d+)/(\d+) loss \S+ .*\| (\S+) s/step "
                  r"([\d,]+) tok/s MFU ([\d.]+)% mem ([\d.]+ [kMG]?B) \| ETA (\S+)(.*)$")


def test_a_20_step_run_logs_time_step_time_eta_mfu_and_memory(wiki_shards: Path, tmp_path: Path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the measured peak is cached
    result = run("python", "pretrain.py", 1, micro_run(wiki_shards, run_dir, 20))
    out = result.stdout
    lines = [m for m in map(LINE.match, out.splitlines()) if m]
    assert [int(m.group(2)) for m in lines] == list(range(1, 21)), out[-3000:]
    assert {int(m.group(3)) for m in lines} == {20}
    for m in lines:
        datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        assert float(m.group(4)) > 0 and 0 < float(m.group(6)) < 100
    assert lines[-1].group(8) == "0:00:00"
    assert "steps 0 → 20" in out and "time-boxed" not in out
    assert re.search(r"MFU against 1 × [\d,.]+ GFLOP/s \(measured torch.float32 matmul", out), out[:3000]
    cache = json.loads((tmp_path / "cache" / "dsl_scale" / "matmul_peak.json").read_text())
    assert len(cache) == 1 and next(iter(cache.values())) > 1e8  # measured once, stored

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 21))
    times = [datetime.datetime.fromisoformat(r["time"]) for r in records]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls) and walls[0] > 0
    for r in records:
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["eta_s"] >= 0
        assert 0 < r["mfu"] < 1 and r["peak_mem_bytes"] > 50e6  # RSS of a process holding torch
    assert records[-1]["eta_s"] == 0
    assert records[0]["eta_s"] > records[9]["eta_s"] > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / "tb"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {f"train/{k}" for k in ("wall_s", "step_s", "eta_s", "mfu", "peak_mem_bytes", "tokens_per_s")} <= tags
    assert [e.step for e in board.Scalars("train/mfu")] == list(range(1, 21))


@pytest.mark.slow  # the time-box arithmetic is tests/unit/test_training_metrics.py's; this is the real run
def test_a_time_boxed_run_says_so(wiki_shards: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    overrides = micro_run(wiki_shards, tmp_path / "run", 100000, **{"train.max_minutes": 0.05})
    out = run("python", "pretrain.py", 1, overrides).stdout
    assert "steps 0 → 100000 or 0.05 min of training, whichever comes first (time-boxed)" in out, out[:3000]
    last = [m for m in map(LINE.match, out.splitlines()) if m][-1]
    assert "time box 0.05 min" in last.group(9)
    assert "stopping after 0.05 minutes" in out
