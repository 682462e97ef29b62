"""Full (unsharded) weights from a live engine at any TP × PP × ZeRO layout, on global rank 0.

For tests and small exports: every stage's state passes through rank 0. The streaming, out-of-core
path for large checkpoints is convert.py (readers.py, reshard.py) in this package.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps


def _tp_gather(param: torch.Tensor, full_like: torch.Tensor) -> torch.Tensor:
    dim = getattr(full_like, "partition_dim", 0)
    group = ps.get_tensor_model_parallel_group()
    pieces = [torch.empty_like(param) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, param.contiguous(), group=group)
    return torch.cat(pieces, dim=dim)


def full_state_dict(module: torch.nn.Module, zero_stage: int,
                    values: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
    """fp32 copies of every parameter and buffer under their global names; None except on rank 0. `values`:
    name → this rank's whole (TP-sharded) tensor to write instead of the module's, for every parameter (the
    fp32 master weights under bf16 training: parallel/masters.py)."""
    params = list(module.parameters())
    gathered = contextlib.nullcontext()
    if zero_stage == 3 and values is None:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    local: dict[str, torch.Tensor] = {}
    with gathered:
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not torch.is_tensor(tensor):
                continue
            value = (values[name] if values is not None and name in values else tensor).detach()
            if getattr(tensor, "tensor_model_parallel", False) and ps.get_tensor_model_parallel_world_size() > 1:
                value = _tp_gather(value, tensor)
            local[name] = value.float().clone()
    stages: list[dict | None] = [None] * ps.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(stages, local if ps.get_tensor_model_parallel_rank() == 0 else None,
                           group=ps.get_pipeline_model_parallel_group())
    if dist.get_rank() != 0:
        return None
    merged: dict[str, torch.Tensor] = {}
    for stage in stages:
        merged.update(stage)
    return merged
