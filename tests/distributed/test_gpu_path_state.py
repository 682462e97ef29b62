"""Resumed state on the right device and in the right dtype, on real save/resume runs (bf16, one rank): the EMA
on this rank's compute device in fp32, and AdamW's moments in fp32 on the device of the tensors the optimizer
updates (DeepSpeed's fp32 master weights when the parameters are bf16), holding the checkpoint's values.

Two ways in: DeepSpeed's own checkpoint, and a layout-free one (convert_checkpoint --to deepspeed), whose
moments are written into the engine by checkpoint/reshard.py. Without ZeRO in bf16 those used to be put under
the bf16 parameters in their dtype, where AdamW (stepping the fp32 masters) never read them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dsl_scale.checkpoint import layout
from tests.launching import REPO, env, micro_run, run

pytestmark = pytest.mark.distributed

STEPS = 2


def settings(data, run_dir, **extra) -> list[str]:
    return micro_run(data, run_dir, STEPS, **{"train.save_every": STEPS, "train.ema": 0.9,
                                              "train.precision": "bf16", **extra})


def convert(src, dst, *args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(src), str(dst),
                             *args], env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def resumed_state(data, run_dir, **extra) -> dict:
    result = run("python", "tests/distributed/gpu_path_state_check.py", 1, settings(data, run_dir, **extra))
    assert "resumed from" in result.stdout, result.stdout[-2000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("STATE "))
    return json.loads(line.removeprefix("STATE "))


def total(tensors: dict[str, torch.Tensor]) -> float:
    return sum(float(t.double().abs().sum()) for name, t in tensors.items() if not name.endswith("inv_freq"))


def check(state: dict, reference) -> None:
    assert state["step"] == STEPS and state["param_dtypes"] == ["torch.bfloat16"], state["param_dtypes"]
    device = state["compute_device"]
    assert state["ema"] and all(e["dtype"] == "torch.float32" and e["device"] == device
                                for e in state["ema"].values()), state["ema"]
    assert sum(e["abs_sum"] for e in state["ema"].values()) == pytest.approx(total(reference["ema"]), rel=1e-6)
    moments = [m for m in state["moments"] if m["updated"]]  # state the optimizer will read
    for m in moments:
        assert m["dtype"] == "torch.float32" and m["device"] == m["param_device"] == device, m
    for key in ("exp_avg", "exp_avg_sq"):
        restored = sum(m["abs_sum"] for m in moments if m["key"] == key)
        assert restored == pytest.approx(total(reference[key]), rel=1e-5), key
    assert state["adam_steps"] == [reference["adam_step"]]  # bias correction continues from the saved count


@pytest.fixture(scope="module")
def bf16_run(wiki_shards, tmp_path_factory):
    """A bf16 ZeRO-0 run saved at its last step, and that checkpoint consolidated (the reference values)."""
    root = tmp_path_factory.mktemp("bf16_state")
    run("python", "pretrain.py", 1, settings(wiki_shards, root / "run"))
    checkpoint = root / "run" / "checkpoints" / f"step_{STEPS:08d}"
    convert(checkpoint, root / "consolidated", "--to", "consolidated")
    files = {"ema": "ema", "exp_avg": "optimizer.exp_avg", "exp_avg_sq": "optimizer.exp_avg_sq"}
    reference = {key: load_file(root / "consolidated" / f"{name}.safetensors") for key, name in files.items()}
    reference["adam_step"] = json.loads((root / "consolidated" / "config.json").read_text())["optimizer_step"]
    return root, checkpoint, reference


@pytest.mark.slow  # on a CPU machine the compute device is the CPU: the device checks bite on a GPU
def test_native_resume_puts_ema_and_moments_on_the_compute_device_in_fp32(wiki_shards, bf16_run):
    root, _, reference = bf16_run
    check(resumed_state(wiki_shards, root / "run"), reference)


@pytest.mark.parametrize("zero_stage", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_layout_free_resume_writes_fp32_moments_where_adamw_reads_them(wiki_shards, bf16_run, tmp_path, zero_stage):
    _, checkpoint, reference = bf16_run
    convert(checkpoint, tmp_path / "resumed", "--to", "deepspeed")
    check(resumed_state(wiki_shards, tmp_path / "resumed", **{"parallel.zero_stage": zero_stage}), reference)


@pytest.mark.slow
def test_zero2_bf16_ema_sharded_over_two_ranks_is_saved_whole_and_resumes_exactly(wiki_shards, tmp_path):
    """Each rank averages only its fp32 partition; a checkpoint gathers them by name and a resume scatters them
    back: 4 steps straight and 2 + 2 with a restart save the same EMA, bit for bit, unlike the module's weights
    would (the EMA moved off its start)."""
    common = {"train.ema": 0.9, "train.precision": "bf16", "parallel.zero_stage": 2}

    def ema_at(run_dir, step: int) -> dict[str, torch.Tensor]:
        path = run_dir / "checkpoints" / f"step_{step:08d}" / layout.ema_name(0, 0, 0)
        return torch.load(path, map_location="cpu", weights_only=True)

    run("torchrun", "pretrain.py", 2, micro_run(wiki_shards, tmp_path / "straight", 4,
                                                **{**common, "train.save_every": 2}))
    run("torchrun", "pretrain.py", 2, micro_run(wiki_shards, tmp_path / "restarted", 2,
                                                **{**common, "train.save_every": 2}))
    run("torchrun", "pretrain.py", 2, micro_run(wiki_shards, tmp_path / "restarted", 4,
                                                **{**common, "train.save_every": 2}))
    straight, restarted = ema_at(tmp_path / "straight", 4), ema_at(tmp_path / "restarted", 4)
    assert sorted(straight) == sorted(restarted) and straight
    assert not (tmp_path / "straight" / "checkpoints" / f"step_{4:08d}" / layout.ema_name(0, 0, 1)).exists()
    for name, value in straight.items():
        assert value.dtype == torch.float32 and torch.equal(value, restarted[name]), name
    earlier = ema_at(tmp_path / "straight", 2)
    assert any(not torch.equal(earlier[n], straight[n]) for n in straight)
