"""The training log's figures (train/metrics.py): the model-FLOP count, the peak used for MFU, the ETA and
the time box."""

from __future__ import annotations

import math

import pytest
import torch

from dsl_scale.config import ModelConfig
from dsl_scale.train import metrics
from tests.unit.test_bench_all import load_tool


def test_the_config_flop_count_is_bench_trains_count_of_the_built_model(process_group):
    from dsl_scale.model.factory import build_dit

    cfg = ModelConfig(hidden=48, n_blocks=3, n_heads=4, cond_dim=16, seq_len=40)
    model = build_dit(cfg, 29, seed=0)
    bench = load_tool("bench_train")
    assert metrics.model_flops_per_token(cfg, 29, 40) == bench.model_flops_per_token(model, 3, 48, 40)


def test_the_peak_comes_from_the_table_the_environment_or_a_cached_measurement(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert metrics.device_peak_flops(torch.device("cuda", 0), "bf16")[0] == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert metrics.device_peak_flops(torch.device("cuda", 0), "bf16")[0] == 756e12
    monkeypatch.setenv(metrics.PEAK_ENV, "1.5e12")
    assert metrics.device_peak_flops(torch.device("cpu"), "fp32") == (1.5e12, f"${metrics.PEAK_ENV}")
    monkeypatch.delenv(metrics.PEAK_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(metrics, "measure_matmul_peak", lambda device, dtype: calls.append(dtype) or 7e10)
    first = metrics.device_peak_flops(torch.device("cpu"), "fp32")
    again = metrics.device_peak_flops(torch.device("cpu"), "fp32")
    assert first[0] == again[0] == 7e10 and calls == [torch.float32]  # measured once, then read
    assert (tmp_path / "dsl_scale" / "matmul_peak.json").exists()


def test_a_real_matmul_peak_is_positive_and_quick():
    assert metrics.measure_matmul_peak(torch.device("cpu"), torch.float32, size=256, repeats=2) > 1e8


def test_eta_follows_the_recent_step_time_and_the_time_box(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
    throughput = metrics.Throughput(flops_per_token=1e6, peak_flops=1e9, peak_source="test")
    progress = metrics.Progress(0, 100, tokens_per_step=1000, device=torch.device("cpu"), throughput=throughput)
    for step in range(1, 11):
        clock[0] += 2.0
        record = {"step": step, "loss": 1.0, **progress.fields(step, step_s=1.5)}
    assert record["eta_s"] == pytest.approx(90 * 2.0) and record["wall_s"] == pytest.approx(20.0)
    assert record["mfu"] == pytest.approx(1000 / 1.5 * 1e6 / 1e9)
    line = progress.line(record)
    assert " step 10/100 loss 1 | 2 s/step 500 tok/s MFU 50.0% mem " in line and line.endswith("ETA 0:03:00")
    assert progress.plan == "steps 0 → 100"

    boxed = metrics.Progress(0, 100000, 1000, torch.device("cpu"), throughput, max_minutes=5)
    clock[0] += 60
    record = {"step": 1, **boxed.fields(1, step_s=60)}
    assert record["eta_s"] == pytest.approx(240)  # the box ends first
    assert boxed.line(record).endswith("ETA 0:04:00 (time box 5 min, 0:04:00 left)")
    assert "time-boxed" in boxed.plan and "100000 or 5 min" in boxed.plan


def test_peak_memory_is_the_resident_set_on_the_cpu():
    before = metrics.peak_memory_bytes(torch.device("cpu"))
    block = torch.ones(64, 1024, 1024, dtype=torch.uint8)  # 64 MiB touched
    after = metrics.peak_memory_bytes(torch.device("cpu"))
    assert after >= before and after > 64 * 2**20 and block.sum() > 0 and not math.isnan(after)
