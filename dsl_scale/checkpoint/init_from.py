"""Starting weights for fine-tuning (`init_from=`): full fp32 tensors (source.py opens any checkpoint), placed
into any TP/PP layout."""

from __future__ import annotations

import torch
from torch import nn


def _shard(full: torch.Tensor, local: torch.Tensor, tp_rank: int) -> torch.Tensor:
    if full.shape == local.shape:
        return full
    dim = getattr(local, "partition_dim", 0)
    pieces = full.shape[dim] // local.shape[dim]
    if full.shape[dim] % local.shape[dim] or not getattr(local, "tensor_model_parallel", False):
        raise ValueError(f"cannot place a tensor of shape {tuple(full.shape)} into {tuple(local.shape)}")
    return full.chunk(pieces, dim=dim)[tp_rank]


@torch.no_grad()
def load_into(module: nn.Module, full: dict[str, torch.Tensor], tp_rank: int) -> list[str]:
    """Copy this rank's part of every tensor `full` has into `module`; returns the names it lacked."""
    missing = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if name not in full:
            missing.append(name)
            continue
        source = _shard(full[name], tensor, tp_rank)
        if source.shape != tensor.shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(full[name].shape)} does not fit {tuple(tensor.shape)}")
        tensor.copy_(source.to(device=tensor.device, dtype=tensor.dtype))
    return missing
