"""Splitting evaluation work over the ranks of a torchrun launch; a plain process is a world of one."""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist


def init_world() -> None:
    """Join the launch's process group (gloo) when started under torchrun/deepspeed with several ranks."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def my_slice(n: int) -> range:
    """This rank's contiguous share of n items (shares differ by at most one)."""
    r, w = rank(), world_size()
    return range(r * n // w, (r + 1) * n // w)


def gather(part: Any) -> list[Any]:
    """Every rank's `part`, in rank order, on every rank."""
    if world_size() == 1:
        return [part]
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, part)
    return parts


def from_rank0(value: Any) -> Any:
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
