"""Pipeline parallelism with ZeRO-2/3 on real gloo runs: the same losses as ZeRO-1 (which keeps whole
gradients and reduces them once per step), and a killed-and-resumed PP·ZeRO-3 run continues bit-exactly.

The step losses of these runs depend on every earlier update (lr 2e-3, gradient clipping at 1.0 active), so a
lost or doubled micro-batch gradient in ZeRO's partitioned accumulation shows from step 2 on.
"""

from __future__ import annotations

import pytest

from tests.launching import read_jsonl, run

pytestmark = pytest.mark.distributed


def overrides(data, run_dir, steps: int, **extra) -> list[str]:
    base = {
        "model": "micro", "model.seq_len": 64, "data.path": data, "run_dir": run_dir, "train.steps": steps,
        "train.global_batch": 8, "train.micro_batch": 2, "train.eval_every": 100, "train.eval_examples": 8,
        "train.save_every": 100, "train.log_every": 1, "train.ema": 0.9, "optim.lr": 2e-3, "optim.warmup_steps": 2,
        "parallel.pp": 2, "parallel.zero3_persistence_threshold": 0, **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]


def train(data, run_dir, ranks: int, steps: int, **extra) -> list[dict]:
    run("torchrun", "pretrain.py", ranks, overrides(data, run_dir, steps, **extra))
    return read_jsonl(run_dir / "metrics.jsonl")


def assert_same_curve(records: list[dict], reference: list[dict]) -> None:
    assert [r["step"] for r in records] == [r["step"] for r in reference]
    for record, ref in zip(records, reference):
        assert record["loss"] == pytest.approx(ref["loss"], rel=1e-5), (record, ref)
        assert record["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), (record, ref)
        if "val_loss" in ref:
            assert record["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5), (record, ref)


def test_pp2_zero3_losses_equal_pp2_zero1(wiki_shards, tmp_path):
    """4 micro-batches per step through the 1F1B schedule (its cooldown runs backwards with no forward
    between them), one DP replica per stage."""
    reference = train(wiki_shards, tmp_path / "z1", 2, 3, **{"parallel.zero_stage": 1})
    zero3 = train(wiki_shards, tmp_path / "z3", 2, 3, **{"parallel.zero_stage": 3})
    assert len(reference) == 3 and reference[-1]["val_loss"] > 0
    assert_same_curve(zero3, reference)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_pp2_dp2_zero_partitions_give_the_zero1_losses(wiki_shards, tmp_path, zero_stage):
    reference = train(wiki_shards, tmp_path / "z1", 4, 3, **{"parallel.zero_stage": 1})
    partitioned = train(wiki_shards, tmp_path / f"z{zero_stage}", 4, 3, **{"parallel.zero_stage": zero_stage})
    assert_same_curve(partitioned, reference)


@pytest.mark.slow
def test_pp2_zero3_run_resumes_bit_exactly(wiki_shards, tmp_path):
    common = {"parallel.zero_stage": 3, "train.save_every": 3}
    whole = train(wiki_shards, tmp_path / "whole", 2, 6, **common)
    train(wiki_shards, tmp_path / "split", 2, 3, **common)
    result = run("torchrun", "pretrain.py", 2, overrides(wiki_shards, tmp_path / "split", 6, **common))
    assert "resumed from" in result.stdout
    split = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert len(whole) == 6
    assert [r["loss"] for r in split] == [r["loss"] for r in whole]
    assert [r["grad_norm"] for r in split] == [r["grad_norm"] for r in whole]
