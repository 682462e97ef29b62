"""Every TP × PP × ZeRO layout trains the same numbers as one process (fp32, dropout 0, 5 steps)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dsl_scale.checkpoint.source import open_checkpoint
from tests.launching import read_jsonl, run

pytestmark = pytest.mark.distributed

COMMON = {
    "model": "micro", "model.seq_len": 64, "model.dropout": 0.0, "train.steps": 5, "train.global_batch": 8,
    "train.micro_batch": 2, "train.eval_every": 5, "train.eval_examples": 8, "train.save_every": 5,
    "train.ema": 0.0, "train.log_every": 1, "optim.lr": 1e-3, "optim.warmup_steps": 1,
    "train.save_final_weights": True,
}
# (ranks, tp, pp, zero): the default run covers each mechanism once; `slow` covers the whole grid
# of layouts within 4 processes.
FAST = [(2, 2, 1, 0), (2, 1, 2, 1), (2, 1, 1, 3), (4, 2, 2, 1)]
FULL = [
    (2, 1, 1, 0), (2, 1, 1, 1), (2, 1, 1, 2), (2, 2, 1, 1), (4, 2, 1, 1), (4, 2, 1, 2), (4, 2, 1, 3),
    (2, 1, 2, 0), (4, 1, 2, 0), (4, 1, 2, 1), (4, 2, 2, 0), (2, 1, 2, 2), (2, 1, 2, 3), (4, 2, 2, 3),
]


def overrides(data, run_dir, tp=1, pp=1, zero=0, sp=False) -> list[str]:
    values = {**COMMON, "data.path": data, "run_dir": run_dir, "parallel.tp": tp, "parallel.pp": pp,
              "parallel.zero_stage": zero, "parallel.sequence_parallel": sp}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def reference(wiki_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    run("python", "pretrain.py", 1, overrides(wiki_shards, run_dir))
    return read_jsonl(run_dir / "metrics.jsonl"), load_file(run_dir / "final" / "model.safetensors")


def check_layout(reference, wiki_shards, tmp_path, ranks, tp, pp, zero, sp=False):
    run("torchrun", "pretrain.py", ranks, overrides(wiki_shards, tmp_path, tp, pp, zero, sp))
    ref_metrics, ref_weights = reference
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(metrics) == len(ref_metrics) == 5
    for ours, ref in zip(metrics, ref_metrics):
        assert ours["loss"] == pytest.approx(ref["loss"], abs=1e-5), (ours["step"], ours["loss"], ref["loss"])
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    weights = load_file(tmp_path / "final" / "model.safetensors")
    assert set(weights) == set(ref_weights)
    for name, value in weights.items():
        torch.testing.assert_close(value, ref_weights[name], atol=1e-5, rtol=0, msg=name)
    if zero < 3:  # the sharded checkpoint of this layout merges back into the same weights
        merged, _ = open_checkpoint(tmp_path).weights("model")
        for name, value in weights.items():
            assert torch.equal(merged[name], value), name


@pytest.mark.parametrize(("ranks", "tp", "pp", "zero"), FAST, ids=lambda v: str(v))
def test_layout_matches_single_process(reference, wiki_shards, tmp_path, ranks, tp, pp, zero):
    check_layout(reference, wiki_shards, tmp_path, ranks, tp, pp, zero)


@pytest.mark.slow
@pytest.mark.parametrize(("ranks", "tp", "pp", "zero"), FULL, ids=lambda v: str(v))
def test_every_layout_matches_single_process(reference, wiki_shards, tmp_path, ranks, tp, pp, zero):
    check_layout(reference, wiki_shards, tmp_path, ranks, tp, pp, zero)


def test_tensor_parallel_shards_equal_slices_of_the_single_rank_weights():
    result = run("torchrun", "tests/distributed/tp_init_check.py", 2, [])
    assert "shards equal their TP=1 slices" in result.stdout


def test_sequence_parallel_layout_matches_single_process(reference, wiki_shards, tmp_path):
    check_layout(reference, wiki_shards, tmp_path, 2, 2, 1, 1, sp=True)


def test_sequence_parallel_gradients_equal_the_single_rank_gradients():
    result = run("torchrun", "tests/distributed/sp_grad_check.py", 2, [])
    assert "gradients equal TP=1" in result.stdout
