"""Process groups: torch.distributed start-up and megatron-core's TP × PP × DP layout.

The DP group is what DeepSpeed shards ZeRO state over; `MegatronMPU` hands it to DeepSpeed in the
form `deepspeed.initialize(mpu=...)` expects (megatron-core no longer exposes that interface itself).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dsl_scale.config import check_parallel_layout


def on_gpu() -> bool:
    return torch.cuda.is_available()


def prepare_environment() -> None:
    """Call before importing deepspeed: picks its accelerator and fills in a world of one for plain `python`."""
    if not on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_cpu_threads() -> None:
    """Share the cores between the ranks of this node instead of oversubscribing them."""
    if on_gpu() or "OMP_NUM_THREADS" in os.environ and os.environ.get("DSL_SCALE_KEEP_THREADS"):
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int


def check_layout(world_size: int, tp: int, pp: int) -> None:
    """The world fits tp × pp (dsl_scale.config.check_parallel_layout, the one layout check)."""
    check_parallel_layout(tp=tp, pp=pp, world_size=world_size)


def init_process_groups(tp: int = 1, pp: int = 1, timeout_minutes: int = 30) -> Topology:
    """Start torch.distributed (nccl on GPU, gloo on CPU) and megatron-core's TP/PP/DP groups."""
    from datetime import timedelta

    import deepspeed
    from megatron.core import parallel_state

    prepare_environment()
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if on_gpu() else "gloo", timeout=timedelta(minutes=timeout_minutes)
        )
    if on_gpu():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    world = dist.get_world_size()
    check_layout(world, tp, pp)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    return current_topology()


def current_topology() -> Topology:
    from megatron.core import parallel_state as ps

    return Topology(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
    )


class MegatronMPU:
    """The model-parallel unit DeepSpeed asks for, answered from megatron-core's parallel_state."""

    def __init__(self):
        from megatron.core import parallel_state

        self.ps = parallel_state

    def get_model_parallel_rank(self) -> int:
        return self.ps.get_model_parallel_group().rank()

    def get_model_parallel_world_size(self) -> int:
        return self.ps.get_model_parallel_group().size()

    def get_model_parallel_group(self):
        return self.ps.get_model_parallel_group()

    def get_tensor_model_parallel_rank(self) -> int:
        return self.ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_group(self):
        return self.ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.ps.get_tensor_model_parallel_src_rank()

    def get_data_parallel_rank(self) -> int:
        return self.ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self.ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return self.ps.get_data_parallel_group()

    def get_pipeline_model_parallel_rank(self) -> int:
        return self.ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self.ps.get_pipeline_model_parallel_world_size()
