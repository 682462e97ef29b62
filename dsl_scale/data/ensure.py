"""A run's corpus on first use: when `data.path` does not exist and `data.source` is set (and nothing is remote),
rank 0 prepares it (atomically, so an interrupted preparation leaves no half corpus) while the others wait."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch.distributed as dist

from dsl_scale.core.files import atomic_directory


def ensure_corpus(data, seq_len: int, rank: int, log: Callable[[str], None] = print) -> bool:
    """`data`: the run's DataConfig. Returns whether this call prepared it (on rank 0). An existing directory is
    left alone (the shard checks come when it is opened)."""
    prepared = False
    if not os.path.exists(data.path) and data.source and not data.remote:
        if rank == 0:
            from dsl_scale.data.prepare import prepare

            log(f"{data.path} does not exist: preparing it from {data.source!r}")
            with atomic_directory(data.path) as staging:
                prepare(data.source, str(staging), seq_len, tokenizer=data.tokenizer, fmt=data.format)
            prepared = True
        if dist.is_initialized():
            dist.barrier()
    return prepared
