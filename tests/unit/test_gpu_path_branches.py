"""Every branch taken when CUDA is available, reached on a CPU machine by making torch say it has a GPU: what
`auto` means there (compile on below ZeRO-3, bf16, batched sampling forwards, bf16 inference), torch's fused
AdamW in the engine config, compute on cuda:LOCAL_RANK, megatron left unpatched, the data-sheet peak and CUDA
memory in the throughput figures. No CUDA call is made beyond the ones stood in for here."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.checkpoint.inference import inference_precision
from dsl_scale.config import Config
from dsl_scale.core import device as device_lib
from dsl_scale.core import patches
from dsl_scale.parallel import cpu_compat
from dsl_scale.parallel import engine as engine_lib
from dsl_scale.parallel.compile import compile_enabled
from dsl_scale.parallel.topology import Topology, process_group_backend
from dsl_scale.sampling.denoiser import resolve_batch_invariant
from dsl_scale.train import metrics

ONE_RANK = Topology(rank=0, world_size=1, tp=1, pp=1, dp=1, tp_rank=0, pp_rank=0, dp_rank=0)
GPU = torch.device("cuda", 3)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    return monkeypatch


def test_auto_settings_take_their_gpu_values(with_cuda):
    assert compile_enabled("auto") and compile_enabled("auto", zero_stage=2)
    assert not compile_enabled("auto", zero_stage=3)
    assert engine_lib.resolved_precision("auto") == "bf16"
    assert engine_lib.activation_dtype("auto") == torch.bfloat16
    assert inference_precision("auto", GPU) == "bf16"
    assert resolve_batch_invariant("auto", GPU) is False
    assert process_group_backend("auto") == "nccl"


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_the_engine_config_on_a_gpu_is_bf16_with_torchs_fused_adamw(with_cuda, zero_stage):
    cfg = Config()
    cfg.parallel.zero_stage = zero_stage
    ds = engine_lib.deepspeed_config(cfg, ONE_RANK)
    assert ds["bf16"] == {"enabled": True}
    assert ds["optimizer"]["params"]["fused"] is True and ds["optimizer"]["params"]["torch_adam"] is True
    # ZeRO-1/2 overlap their (fp32) gradient reduction with the backward; ZeRO-3 does by default
    assert ds["zero_optimization"].get("overlap_comm", False) is (zero_stage in (1, 2))


def test_the_cpu_engine_config_leaves_overlap_comm_off():
    cfg = Config()
    cfg.parallel.zero_stage = 1
    assert "overlap_comm" not in engine_lib.deepspeed_config(cfg, ONE_RANK)["zero_optimization"]


def test_compute_goes_to_the_local_gpu_and_megatron_is_not_patched(with_cuda):
    assert device_lib.compute_device() == GPU
    assert cpu_compat.install() is False and not patches.is_applied(cpu_compat.PATCH)


def test_throughput_figures_use_the_data_sheet_peak_and_cuda_memory(with_cuda):
    with_cuda.delenv(metrics.PEAK_ENV, raising=False)
    with_cuda.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    with_cuda.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 12345)
    peak, source = metrics.device_peak_flops(GPU, "bf16")
    assert peak == dict(metrics.GPU_BF16_PEAKS)["H100"] and "data-sheet" in source
    assert metrics.peak_memory_bytes(GPU) == 12345


def test_no_gloo_groups_are_made_beside_nccl_ones():
    from dsl_scale.parallel.topology import model_parallel_options

    assert model_parallel_options("nccl") == {"create_gloo_process_groups": False}
    assert model_parallel_options("gloo") == {"create_gloo_process_groups": True}  # as megatron's default
