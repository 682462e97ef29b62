"""Seeds derived from (global seed, step, example index), never from the rank (ARCHITECTURE.md).

The training draws (times, masks, SNRs, channel noise) use the same keys through the counter-based generator
in core/counter_rng.py, which computes them on the device; the host-side generators here serve host-side
consumers (the model's dropout seeds, evaluation and sampling draws)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key; distinct key tuples give independent streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


def per_example(positions: torch.Tensor | Sequence[int], *keys: int) -> torch.Tensor:
    """One seed per example, `derive_seed(*keys, position)`, as an int64 tensor [len(positions)] on the host."""
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist()
    return torch.tensor([derive_seed(*keys, p) for p in positions], dtype=torch.long, device="cpu")


# Stream names keep the purposes apart: the same (seed, step) never feeds two kinds of draw. The objectives'
# times, masks, SNRs and noise all come from MASK_STREAM, told apart by counter_rng draw ids (1, once reserved
# for times, was never used).
MASK_STREAM = 2
DROPOUT_STREAM = 3
EVAL_STREAM = 4
