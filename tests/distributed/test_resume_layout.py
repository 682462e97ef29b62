"""Resume at any layout: a real 2-rank ZeRO-2 run's checkpoint resumed with one rank (a requeued job on fewer
nodes) is resharded in-process and continues the uninterrupted run's loss curve; checkpoint.reshard=never
refuses it naming the offline command."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dsl_scale.checkpoint.run_lock import LOCK_NAME
from tests.launching import REPO, command, env, read_jsonl, run

pytestmark = pytest.mark.distributed

COMMON = {
    "model": "micro", "model.seq_len": 64, "model.dropout": 0.0, "train.steps": 6, "train.global_batch": 8,
    "train.micro_batch": 2, "train.eval_every": 100, "train.eval_examples": 8, "train.save_every": 3,
    "train.log_every": 1, "train.ema": 0.9, "optim.lr": 2e-3, "optim.warmup_steps": 2,
}


def overrides(data, run_dir, **extra) -> list[str]:
    return [f"{k}={v}" for k, v in {**COMMON, "data.path": data, "run_dir": run_dir, **extra}.items()]


def _interrupted_copy(whole, out, step: int):
    """`whole` as it was right after the save of `step`: later tags gone, `latest` naming that step."""
    shutil.copytree(whole, out)
    tag = f"step_{step:08d}"
    for later in (out / "checkpoints").glob("step_*"):
        if later.name > tag:
            shutil.rmtree(later)
    (out / "checkpoints" / "latest").write_text(tag)
    return out


def test_a_dp2_zero2_checkpoint_resumes_with_one_rank(wiki_shards, tmp_path):
    whole = tmp_path / "whole"
    run("torchrun", "pretrain.py", 2, overrides(wiki_shards, whole, **{"parallel.zero_stage": 2}))

    refused_dir = _interrupted_copy(whole, tmp_path / "refused", 3)
    refused = subprocess.run(command("python", "pretrain.py", 1, overrides(
        wiki_shards, refused_dir, **{"parallel.zero_stage": 2, "checkpoint.reshard": "never"})),
        env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    out = refused.stdout + refused.stderr
    assert "was saved at TP1·PP1·DP2·ZeRO-2, this run is TP1·PP1·DP1·ZeRO-2" in out, out[-3000:]
    assert f"tools/convert_checkpoint.py {refused_dir} NEW_RUN_DIR --to deepspeed" in out

    resumed_dir = _interrupted_copy(whole, tmp_path / "resumed", 3)
    result = run("python", "pretrain.py", 1, overrides(wiki_shards, resumed_dir, **{"parallel.zero_stage": 2}))
    assert "resharded in-process for this run's TP1·PP1·DP1·ZeRO-2" in result.stdout
    reference = {r["step"]: r for r in read_jsonl(whole / "metrics.jsonl")}
    resumed = read_jsonl(resumed_dir / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))  # steps 1-3 kept from before the interruption
    for record in resumed[3:]:
        ref = reference[record["step"]]
        assert record["loss"] == pytest.approx(ref["loss"], abs=1e-5), (record, ref)
        assert record["lr"] == pytest.approx(ref["lr"], rel=1e-6)
    assert not (resumed_dir / "checkpoints" / ".resharded").exists()  # the in-process copy is gone
    assert (resumed_dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert not (resumed_dir / LOCK_NAME).exists() and not (refused_dir / LOCK_NAME).exists()


def _launcher(ranks: int) -> str:
    return "python" if ranks == 1 else "torchrun"


@pytest.mark.slow
@pytest.mark.parametrize("before, after, saved, now", [
    ((1, {}), (2, {"parallel.zero_stage": 3}), "TP1·PP1·DP1·ZeRO-0", "TP1·PP1·DP2·ZeRO-3"),
    ((4, {"parallel.tp": 2, "parallel.pp": 2, "parallel.zero_stage": 1}),
     (2, {"parallel.pp": 2, "parallel.zero_stage": 1}), "TP2·PP2·DP1·ZeRO-1", "TP1·PP2·DP1·ZeRO-1"),
], ids=["dp1-to-dp2-zero3", "tp2pp2-to-tp1pp2"])
def test_other_layouts_resume_on_the_uninterrupted_curve(wiki_shards, tmp_path, before, after, saved, now):
    extra = {"parallel.zero3_persistence_threshold": 0}
    whole = tmp_path / "whole"
    run(_launcher(before[0]), "pretrain.py", before[0], overrides(wiki_shards, whole, **extra, **before[1]))
    resumed_dir = _interrupted_copy(whole, tmp_path / "resumed", 3)
    result = run(_launcher(after[0]), "pretrain.py", after[0], overrides(wiki_shards, resumed_dir, **extra, **after[1]))
    assert f"was saved at {saved}; resharded in-process for this run's {now}" in result.stdout
    reference = {r["step"]: r for r in read_jsonl(whole / "metrics.jsonl")}
    resumed = read_jsonl(resumed_dir / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for record in resumed[3:]:
        assert record["loss"] == pytest.approx(reference[record["step"]]["loss"], abs=1e-5), record
    assert not (resumed_dir / "checkpoints" / ".resharded").exists()
