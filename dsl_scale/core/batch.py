"""The batch an objective prepares for the model: what the training loop, the pipeline schedule and the
evaluation code pass between them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Prepared:
    inputs: torch.Tensor  # token ids the model reads, [b, s]
    targets: torch.Tensor  # [b, s]
    sigma: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    model_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)  # extra model inputs (DSL's z)
    # per-sequence dropout seeds (int64 [b]) for the model's training forward; None: no seeded dropout
    dropout_seeds: torch.Tensor | None = None
