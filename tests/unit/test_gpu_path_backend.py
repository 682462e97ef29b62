"""parallel.backend=auto|nccl|gloo: CUDA asked for or allocated but absent is an error before any work, never a
silent fall-back to gloo (the NCCL ranks on the other nodes would wait for this one until they time out).
The machine's state (CUDA available or not, the launcher's variables) is set with monkeypatch."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from dsl_scale.config import Config, ParallelConfig, validate
from dsl_scale.parallel.topology import (
    GPU_ALLOCATION_VARIABLES,
    allocated_gpu_variables,
    prepare_environment,
    process_group_backend,
)
from tests.launching import REPO, command, env


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in (*GPU_ALLOCATION_VARIABLES, "DS_ACCELERATOR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_takes_nccl_with_cuda_and_gloo_on_a_cpu_machine(no_cuda):
    assert process_group_backend("auto") == "gloo"
    no_cuda.setattr(torch.cuda, "is_available", lambda: True)
    assert process_group_backend("auto") == "nccl"
    assert process_group_backend("nccl") == "nccl"


@pytest.mark.parametrize("name, value", [
    ("SLURM_GPUS_ON_NODE", "8"), ("SLURM_JOB_GPUS", "0,1,2,3"), ("SLURM_STEP_GPUS", "0"),
    ("CUDA_VISIBLE_DEVICES", "0"), ("CUDA_VISIBLE_DEVICES", "GPU-5c1f2b7e"),
])
def test_auto_refuses_gloo_when_the_launcher_allocated_gpus_cuda_cannot_see(no_cuda, name, value):
    no_cuda.setenv(name, value)
    with pytest.raises(RuntimeError, match="refusing to fall back to gloo") as err:
        process_group_backend("auto")
    assert f"{name}={value}" in str(err.value) and "parallel.backend=gloo" in str(err.value)


@pytest.mark.parametrize("name, value", [
    ("CUDA_VISIBLE_DEVICES", ""), ("CUDA_VISIBLE_DEVICES", "-1"), ("CUDA_VISIBLE_DEVICES", "NoDevFiles"),
    ("SLURM_GPUS_ON_NODE", "0"), ("SLURM_JOB_GPUS", ""),
])
def test_variables_that_allocate_no_gpu_leave_auto_on_gloo(no_cuda, name, value):
    no_cuda.setenv(name, value)
    assert allocated_gpu_variables() == {}
    assert process_group_backend("auto") == "gloo"


def test_deepspeeds_launcher_on_a_cpu_machine_is_not_an_allocation(no_cuda):
    """`DS_ACCELERATOR=cpu deepspeed --num_gpus 2 ...` sets CUDA_VISIBLE_DEVICES=0,1 for its CPU ranks."""
    no_cuda.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES=0,1"):
        process_group_backend("auto")
    no_cuda.setenv("DS_ACCELERATOR", "cpu")
    assert process_group_backend("auto") == "gloo"
    no_cuda.setenv("SLURM_GPUS_ON_NODE", "4")  # SLURM's allocation still counts
    with pytest.raises(RuntimeError, match="SLURM_GPUS_ON_NODE=4"):
        process_group_backend("auto")


def test_prepare_environment_does_not_pick_the_cpu_accelerator_for_allocated_gpus(no_cuda):
    no_cuda.setenv("RANK", "0")  # leave the rest of the environment alone
    no_cuda.setenv("SLURM_JOB_GPUS", "0")
    prepare_environment()
    assert "DS_ACCELERATOR" not in os.environ
    no_cuda.delenv("SLURM_JOB_GPUS")
    prepare_environment()
    assert os.environ["DS_ACCELERATOR"] == "cpu"


def test_nccl_without_cuda_is_an_error_and_gloo_is_always_allowed(no_cuda):
    with pytest.raises(RuntimeError, match="parallel.backend=nccl but CUDA is not available"):
        process_group_backend("nccl")
    no_cuda.setenv("SLURM_GPUS_ON_NODE", "8")
    assert process_group_backend("gloo") == "gloo"
    no_cuda.setattr(torch.cuda, "is_available", lambda: True)
    assert process_group_backend("gloo") == "gloo"


def test_an_unknown_backend_fails_validation_and_resolution():
    with pytest.raises(ValueError, match=r"parallel.backend='mpi' is not one of"):
        validate(Config(parallel=ParallelConfig(backend="mpi")))
    with pytest.raises(ValueError, match=r"parallel.backend='mpi'"):
        process_group_backend("mpi")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pretrain_with_nccl_and_no_cuda_stops_before_any_work(tmp_path):
    """The check runs in Trainer.__init__ right after the config checks: nothing written, no data prepared."""
    run_dir, data = tmp_path / "run", tmp_path / "data"
    result = subprocess.run(command("python", "pretrain.py", 1, [
        "parallel.backend=nccl", f"run_dir={run_dir}", f"data.path={data}", "model=micro"]),
        env=env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "parallel.backend=nccl but CUDA is not available" in result.stderr + result.stdout
    assert not data.exists() and not (run_dir.exists() and any(run_dir.iterdir()))  # Hydra makes the directory
