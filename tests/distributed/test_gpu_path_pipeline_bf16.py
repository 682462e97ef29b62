"""Pipeline parallelism in bf16 (the GPU default) on real gloo runs: the stages exchange activations in the
training precision, and the losses track the fp32 run's (as tests/distributed/test_pretrain.py's bf16 test
checks for one rank). With the p2p buffers allocated in fp32 while DeepSpeed casts the stages to bf16, the
second stage received fp32 activations into its bf16 layers and the run failed at the step-0 evaluation.
"""

from __future__ import annotations

import pytest

from tests.launching import micro_run, read_jsonl, run

pytestmark = pytest.mark.distributed

STEPS = 3


def train(data, run_dir, **extra) -> list[dict]:
    run("torchrun", "pretrain.py", 2, micro_run(data, run_dir, STEPS, **{"parallel.pp": 2, **extra}))
    return read_jsonl(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def fp32_curve(wiki_shards, tmp_path_factory) -> list[dict]:
    return train(wiki_shards, tmp_path_factory.mktemp("pp2_fp32"), **{"train.precision": "fp32"})


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_pp2_bf16_losses_track_fp32(wiki_shards, tmp_path, fp32_curve, zero_stage):
    bf16 = train(wiki_shards, tmp_path / "bf16", **{"train.precision": "bf16", "parallel.zero_stage": zero_stage})
    assert [r["step"] for r in bf16] == [r["step"] for r in fp32_curve] == list(range(1, STEPS + 1))
    for ref, got in zip(fp32_curve, bf16):
        assert got["loss"] == pytest.approx(ref["loss"], rel=2e-2), (ref, got)
    # the evaluation at the last step runs forward-only through both stages
    assert bf16[-1]["val_loss"] == pytest.approx(fp32_curve[-1]["val_loss"], rel=2e-2)
    assert "bf16" in (tmp_path / "bf16" / "config.yaml").read_text()
