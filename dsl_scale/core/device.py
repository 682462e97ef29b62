"""Where tensors live. Compute goes to `cuda:LOCAL_RANK` when a GPU is present, else to the CPU; a collective's
tensors go where its group's backend can reach them (NCCL: the current GPU; gloo: the CPU). Host-side draws
(seeded CPU generators, batch assembly) say `device="cpu"` explicitly; a test keeps every tensor factory in
the training, sampling, evaluation and checkpoint paths explicit about its device."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

CPU = torch.device("cpu")


def compute_device() -> torch.device:
    """This rank's accelerator (cuda:LOCAL_RANK) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return CPU


def collective_device(group=None) -> torch.device:
    """The device a tensor must be on to take part in a collective over `group` (the default group when None)."""
    if dist.is_initialized() and dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return CPU
