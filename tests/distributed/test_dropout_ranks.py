"""Dropout masks are drawn per sequence from (seed, step, position in the global batch), so a run with
dropout trains the same numbers at every DP size (and TP / sequence-parallel / PP layout)."""

from __future__ import annotations

import pytest

from tests.launching import read_jsonl, run

pytestmark = pytest.mark.distributed

STEPS = 5  # from step 1 the gates and output layer are zero: dropout shows from step ~3 on


def overrides(data, run_dir, tp=1, pp=1, sp=False) -> list[str]:
    values = {
        "model": "micro", "model.seq_len": 64, "model.dropout": 0.1, "data.path": data, "run_dir": run_dir,
        "train.steps": STEPS, "train.global_batch": 8, "train.micro_batch": 2, "train.eval_every": STEPS,
        "train.eval_examples": 8, "train.save_every": STEPS, "train.log_every": 1, "train.ema": 0.0,
        "optim.lr": 1e-2, "optim.warmup_steps": 1, "parallel.tp": tp, "parallel.pp": pp,
        "parallel.zero_stage": 1, "parallel.sequence_parallel": sp,
    }
    return [f"{k}={v}" for k, v in values.items()]


def assert_same_losses(ours: list[dict], ref: list[dict]) -> None:
    assert len(ours) == len(ref) == STEPS
    for a, b in zip(ours, ref):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (a["step"], a["grad_norm"], b["grad_norm"])


@pytest.fixture(scope="module")
def single_rank(wiki_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dropout_dp1")
    run("python", "pretrain.py", 1, overrides(wiki_shards, run_dir))
    return read_jsonl(run_dir / "metrics.jsonl")


def test_dropout_losses_do_not_depend_on_the_data_parallel_size(single_rank, wiki_shards, tmp_path):
    run("torchrun", "pretrain.py", 2, overrides(wiki_shards, tmp_path))
    assert_same_losses(read_jsonl(tmp_path / "metrics.jsonl"), single_rank)


@pytest.mark.slow
@pytest.mark.parametrize(("tp", "pp", "sp"), [(2, 1, False), (2, 1, True), (1, 2, False)], ids=str)
def test_dropout_losses_do_not_depend_on_the_model_parallel_layout(single_rank, wiki_shards, tmp_path, tp, pp, sp):
    run("torchrun", "pretrain.py", 2, overrides(wiki_shards, tmp_path, tp, pp, sp))
    assert_same_losses(read_jsonl(tmp_path / "metrics.jsonl"), single_rank)
