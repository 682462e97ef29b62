"""Real multi-process training runs of launchers/pretrain.py (gloo on CPU, micro model, L = 64)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.launching import read_jsonl, run, start

pytestmark = pytest.mark.distributed


def overrides(data, run_dir, steps, **extra) -> list[str]:
    base = {
        "model": "micro", "model.seq_len": 64, "data.path": data, "run_dir": run_dir,
        "train.steps": steps, "train.global_batch": 8, "train.micro_batch": 2, "train.eval_every": 6,
        "train.eval_examples": 8, "train.save_every": 4, "train.log_every": 1, "optim.lr": 2e-3,
        "optim.warmup_steps": 2, **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]


def test_two_ranks_loss_falls_and_a_killed_run_resumes_bit_exactly(wiki_shards, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run("deepspeed", "pretrain.py", 2, overrides(wiki_shards, whole, 12))
    reference = read_jsonl(whole / "metrics.jsonl")
    evals = read_jsonl(whole / "eval.jsonl")
    assert [r["step"] for r in reference] == list(range(1, 13))
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(reference[0])
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 12
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.2, evals
    assert (whole / "checkpoints" / "latest").read_text() == "step_00000012"
    assert any((whole / "tb").iterdir())

    job = start("deepspeed", "pretrain.py", 2, overrides(wiki_shards, broken, 12))
    deadline = time.monotonic() + 240
    while job.poll() is None and time.monotonic() < deadline:
        if len(read_jsonl(broken / "metrics.jsonl")) >= 5:
            os.killpg(job.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    job.wait()
    done_before_kill = len(read_jsonl(broken / "metrics.jsonl"))
    assert 5 <= done_before_kill < 12, "the run must be killed part-way for this test to mean anything"

    result = run("deepspeed", "pretrain.py", 2, overrides(wiki_shards, broken, 12))
    assert "resumed from" in result.stdout
    resumed = read_jsonl(broken / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in reference]


def test_losses_do_not_depend_on_launcher_or_data_parallel_size(wiki_shards, tmp_path):
    """Without dropout, plain python (1 rank) and torchrun (2 ranks) see the same global batches,
    times and masks; only the order of floating-point reductions differs."""
    single = tmp_path / "single"
    double = tmp_path / "double"
    common = {"model.dropout": 0.0, "train.ema": 0.0}
    run("python", "pretrain.py", 1, overrides(wiki_shards, single, 4, **common))
    run("torchrun", "pretrain.py", 2, overrides(wiki_shards, double, 4, **common))
    a, b = read_jsonl(single / "metrics.jsonl"), read_jsonl(double / "metrics.jsonl")
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)


def test_pipeline_parallel_run_resumes_bit_exactly(wiki_shards, tmp_path):
    common = {"parallel.pp": 2, "train.save_every": 3}
    run("torchrun", "pretrain.py", 2, overrides(wiki_shards, tmp_path / "whole", 6, **common))
    run("torchrun", "pretrain.py", 2, overrides(wiki_shards, tmp_path / "split", 3, **common))
    result = run("torchrun", "pretrain.py", 2, overrides(wiki_shards, tmp_path / "split", 6, **common))
    assert "resumed from" in result.stdout
    whole = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    split = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["loss"] for r in split] == [r["loss"] for r in whole] and len(whole) == 6


def test_bf16_training_tracks_fp32_on_a_tiny_model(wiki_shards, tmp_path):
    """bf16 is the GPU default; on CPU it is only checked for correctness, on tiny shapes."""
    common = {"model.dropout": 0.0, "train.ema": 0.0, "parallel.zero_stage": 1, "train.eval_every": 3}
    run("python", "pretrain.py", 1, overrides(wiki_shards, tmp_path / "fp32", 3, **common))
    run("python", "pretrain.py", 1, overrides(wiki_shards, tmp_path / "bf16", 3, **common,
                                              **{"train.precision": "bf16"}))
    fp32, bf16 = read_jsonl(tmp_path / "fp32" / "metrics.jsonl"), read_jsonl(tmp_path / "bf16" / "metrics.jsonl")
    assert len(fp32) == len(bf16) == 3
    for a, b in zip(fp32, bf16):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2), (a, b)
    assert "bf16" in (tmp_path / "bf16" / "config.yaml").read_text()
