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

from dsl_scale.config import BACKENDS, check_parallel_layout


def on_gpu() -> bool:
    return torch.cuda.is_available()


# Set by the launcher when it gave this process GPUs (SLURM with --gpus*/--gres, or the environment itself).
GPU_ALLOCATION_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")


def _says_gpus(name: str, value: str) -> bool:
    if name == "SLURM_GPUS_ON_NODE":  # a count
        return value not in ("", "0")
    return value not in ("", "-1", "NoDevFiles")  # GPU indices or UUIDs; SLURM writes NoDevFiles for none


def allocated_gpu_variables(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of GPU_ALLOCATION_VARIABLES that say the launcher allocated GPUs to this process.
    CUDA_VISIBLE_DEVICES does not count under DS_ACCELERATOR=cpu: DeepSpeed's launcher sets it to the local
    ranks' indices on CPU machines too, where it has to be started with DS_ACCELERATOR=cpu."""
    env = os.environ if environ is None else environ
    values = {name: env.get(name, "").strip() for name in GPU_ALLOCATION_VARIABLES}
    if env.get("DS_ACCELERATOR") == "cpu":
        values.pop("CUDA_VISIBLE_DEVICES")
    return {name: value for name, value in values.items() if _says_gpus(name, value)}


def process_group_backend(requested: str = "auto", environ: dict[str, str] | None = None) -> str:
    """torch.distributed's backend for `parallel.backend`: nccl when CUDA is available (auto) or asked for,
    gloo otherwise. Refuses (ValueError / RuntimeError) rather than falling back to gloo when the launcher
    allocated GPUs that CUDA cannot see (the other ranks would wait for this one on NCCL until they time out)."""
    if requested not in BACKENDS:
        raise ValueError(f"parallel.backend={requested!r} is not one of {BACKENDS}")
    if requested == "gloo":
        return "gloo"
    if on_gpu():
        return "nccl"
    if requested == "nccl":
        raise RuntimeError("parallel.backend=nccl but CUDA is not available to this process (torch.cuda."
                           f"is_available() is False, torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                           "use parallel.backend=gloo to run on the CPU")
    allocated = allocated_gpu_variables(environ)
    if allocated:
        named = ", ".join(f"{k}={v}" for k, v in allocated.items())
        raise RuntimeError(f"the launcher allocated GPUs to this process ({named}) but CUDA is not available "
                           f"(torch.cuda.is_available() is False, torch {torch.__version__}, CUDA build "
                           f"{torch.version.cuda}): refusing to fall back to gloo, which would leave the NCCL ranks "
                           "waiting. Fix the node's driver / CUDA setup, or set parallel.backend=gloo to run on "
                           "the CPU on purpose (DS_ACCELERATOR=cpu also marks a CPU run under deepspeed's launcher, "
                           "which sets CUDA_VISIBLE_DEVICES itself)")
    return "gloo"


def prepare_environment() -> None:
    """Call before importing deepspeed: picks its accelerator and fills in a world of one for plain `python`.
    The CPU accelerator is not chosen for a process the launcher gave GPUs (`process_group_backend` refuses it)."""
    if not on_gpu() and not allocated_gpu_variables():
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


def shutdown_process_groups() -> None:
    """The end of a finished run: wait for every rank, then take the process groups down while the interpreter
    is whole (left to interpreter exit, a gloo rank can abort: "terminate called without an active
    exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_process_groups(tp: int = 1, pp: int = 1, timeout_minutes: int = 30, backend: str = "auto") -> Topology:
    """Start torch.distributed (`backend`: see process_group_backend) and megatron-core's TP/PP/DP groups."""
    from datetime import timedelta

    dist_backend = process_group_backend(backend)  # before anything starts: a refusal costs nothing

    import deepspeed
    from megatron.core import parallel_state

    from dsl_scale.core import build_lock

    prepare_environment()
    if not dist.is_initialized():
        with build_lock.reported_build_waits():  # DeepSpeed JIT-builds its CPU comm op here: no silent wait
            deepspeed.init_distributed(dist_backend=dist_backend, timeout=timedelta(minutes=timeout_minutes))
    if on_gpu():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    world = dist.get_world_size()
    check_layout(world, tp, pp)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
            **model_parallel_options(dist.get_backend()),
        )
    return current_topology()


def model_parallel_options(backend: str) -> dict:
    """megatron-core's group options for the world's backend: under NCCL no gloo copies of the data-parallel
    groups (megatron builds them for its distributed optimizer's CPU-side state, which dsl_scale does not use;
    at scale they are thousands of TCP connections across nodes, and a slow start-up)."""
    return {"create_gloo_process_groups": backend != dist.Backend.NCCL}


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
