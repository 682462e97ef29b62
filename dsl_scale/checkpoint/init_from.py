"""Starting weights for fine-tuning (`init_from=`): full fp32 tensors, placed into any TP/PP layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dsl_scale.checkpoint.consolidated import is_consolidated
from dsl_scale.checkpoint.hf_mdlm import is_hf_dir, read_hf
from dsl_scale.checkpoint.readers import load_model_weights, resolve_checkpoint
from dsl_scale.checkpoint.safe_load import load_safetensors

CONSOLIDATED = "model.safetensors"


def load_full_weights(path: str | Path, weights: str = "auto") -> dict[str, torch.Tensor]:
    """A `model.safetensors` (a file, a consolidated directory holding one, or a run's `final/`), a Hugging
    Face MDLM directory, or one of our training checkpoints at any TP × PP × ZeRO layout (a run or
    checkpoint directory)."""
    path = Path(path)
    if is_hf_dir(path):
        return read_hf(path)[0]
    if is_consolidated(path):  # like a training checkpoint: EMA weights when it has them (weights="auto")
        state, _ = load_model_weights(path, weights)
        return state
    for candidate in (path, path / CONSOLIDATED, path / "final" / CONSOLIDATED):
        if candidate.is_file() and candidate.suffix == ".safetensors":
            return load_safetensors(candidate)
    if not path.exists():
        raise FileNotFoundError(f"init_from={path} does not exist")
    state, _ = load_model_weights(resolve_checkpoint(path), weights)
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


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
