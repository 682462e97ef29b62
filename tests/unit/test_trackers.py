"""train/trackers.py: the profiler switch writes a Chrome-format trace of exactly its steps; bad windows are
refused; W&B stays off unless enabled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsl_scale.config import WandbConfig
from dsl_scale.train.trackers import StepProfiler, WandbTracker


def test_the_profiler_traces_its_window_into_the_run_directory(tmp_path: Path):
    profiler = StepProfiler([2, 3], tmp_path, rank=0)
    a = torch.randn(64, 64)
    for step in range(1, 6):
        profiler.before_step(step)
        with torch.profiler.record_function(f"step{step}"):
            a = torch.mm(a, a).tanh()
        profiler.after_step(step)
    profiler.close()
    (trace,) = (tmp_path / "profile").glob("rank0*.pt.trace.json")
    names = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {"step2", "step3", "aten::mm"} <= names and not names & {"step1", "step4", "step5"}


def test_the_profiler_is_off_by_default_and_refuses_a_bad_window(tmp_path: Path):
    off = StepProfiler([], tmp_path, rank=0)
    off.before_step(1)
    off.after_step(1)
    off.close()
    assert not (tmp_path / "profile").exists()
    for bad in ([3], [0, 2], [5, 4], [1, 2, 3]):
        with pytest.raises(ValueError, match="train.profile_steps"):
            StepProfiler(bad, tmp_path, rank=0)


def test_wandb_is_off_unless_enabled_and_on_the_logging_rank(tmp_path: Path):
    for cfg, enabled in ((WandbConfig(), True), (WandbConfig(enabled=True), False)):
        tracker = WandbTracker(cfg, tmp_path, {}, enabled)
        tracker.log({"step": 1, "loss": 1.0}, "train")
        tracker.finish()
        assert tracker.run is None and not (tmp_path / "wandb.json").exists()


def test_a_bad_profile_window_is_refused_with_the_config():
    from dsl_scale.config import Config, validate

    cfg = Config()
    cfg.train.profile_steps = [4, 2]
    with pytest.raises(ValueError, match=r"train.profile_steps=\[4, 2\]"):
        validate(cfg)
