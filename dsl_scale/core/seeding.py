"""Seeds derived from (global seed, step, example index), never from the rank (ARCHITECTURE.md)."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key; distinct key tuples give independent streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


def per_example(positions: torch.Tensor, *keys: int) -> torch.Tensor:
    """One seed per example, `derive_seed(*keys, position)`, as an int64 tensor [len(positions)]."""
    return torch.tensor([derive_seed(*keys, int(p)) for p in positions], dtype=torch.long, device="cpu")


def uniform(shape: tuple[int, ...], *keys: int) -> torch.Tensor:
    draws = generator(*keys)
    return torch.rand(shape, generator=draws, dtype=torch.float64, device=draws.device)


# Stream names keep the purposes apart: the same (seed, step) never feeds two kinds of draw. MDLM's times and
# masks both come from MASK_STREAM (1, once reserved for times, was never used).
MASK_STREAM = 2
DROPOUT_STREAM = 3
EVAL_STREAM = 4
