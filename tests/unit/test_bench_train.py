"""tools/bench_train.py: the model-FLOP count against the closed form, and a real (tiny) measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launching import env
from tests.unit.test_bench_all import load_tool

REPO = Path(__file__).resolve().parent.parent.parent


def test_model_flops_count_every_per_token_matmul(process_group):
    from dsl_scale.config import ModelConfig
    from dsl_scale.model.factory import build_dit

    bench = load_tool("bench_train")
    cfg = ModelConfig(hidden=48, n_blocks=3, n_heads=4, cond_dim=16, seq_len=40)
    vocab = 29
    model = build_dit(cfg, vocab, seed=0)
    # Per block: QKV 3H², attention out H², MLP 4H² + 4H²; then the output projection H·V.
    weights = cfg.n_blocks * 12 * cfg.hidden**2 + cfg.hidden * vocab
    assert bench.per_token_weights(model) == weights
    assert bench.model_flops_per_token(model, cfg.n_blocks, cfg.hidden, 40) == 6 * weights + 12 * 3 * 40 * 48


def test_measures_mfu_and_overhead_with_a_profile(tmp_path):
    command = [sys.executable, str(REPO / "tools" / "bench_train.py"), "--json", "--shapes", "micro:32:4",
               "--steps", "1", "--warmup", "1", "--tokenizer", "char", "--mm-size", "256", "--profile", "always"]
    done = subprocess.run(command, capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    (row,) = out["rows"]
    assert (row["model"], row["seq_len"], row["batch"], row["tokenizer"]) == ("micro", 32, 4, "char")
    assert row["flops_per_step"] == (6 * row["per_token_weights"] + 12 * 2 * 32 * 32) * 4 * 32
    assert row["peak_flops"] == out["peak_flops"] > 1e8
    assert row["mfu"] == pytest.approx(row["flops_per_step"] / row["step_s"] / row["peak_flops"])
    assert row["overhead"] == pytest.approx(row["step_s"] / row["plain_step_s"] - 1)
    assert 0 < row["mfu"] < 1 and 0 < row["plain_mfu"] < 1
    ops = [p["op"] for p in row["profile"]["top"]]
    assert "aten::mm" in ops and sum(p["share"] for p in row["profile"]["top"]) <= 1 + 1e-9
    mm_share = next(p["share"] for p in row["profile"]["top"] if p["op"] == "aten::mm")
    assert mm_share <= row["profile"]["matmul_share"] <= 1
    assert "MFU" in done.stdout and "where a plain step's time goes" in done.stdout
    # on the CPU: the framework's own tensor reads on the step path (syncs on a GPU), and where they are
    assert row["syncs_per_step"] == sum(row["sync_sites"].values()) >= 1
    assert all(site.startswith("dsl_scale/") for site in row["sync_sites"])
