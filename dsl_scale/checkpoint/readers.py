"""The readers of every checkpoint kind behind one interface, `CheckpointReader`:
- our DeepSpeed training checkpoints at any TP × PP × ZeRO layout (zero_reader.TrainingCheckpoint);
- consolidated, layout-free directories (consolidated.ConsolidatedCheckpoint);
- Hugging Face MDLM directories and the MDLM code's Lightning files, read into memory (TensorSource).

Which one a path needs is decided in one place, source.py (`open_checkpoint`). Files are read with
`torch.load(weights_only=True)` or from safetensors: nothing in a checkpoint is unpickled as code (safe_load.py).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CheckpointReader(Protocol):
    """Whole (unsharded) tensors by kind: "model" (weights and buffers), "ema", "exp_avg", "exp_avg_sq"."""

    config: dict  # the run config saved with it (our schema's field names)
    step: int
    lr_scheduler: dict | None
    has_optimizer: bool

    def available(self) -> list[str]: ...

    def optimizer_step(self) -> int: ...

    def full(self, kind: str) -> dict[str, torch.Tensor]: ...


class TensorSource:
    """Tensors already in memory (an imported Hugging Face MDLM directory or Lightning checkpoint)."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]], config: dict, step: int = 0):
        self.tensors, self.config, self.step = tensors, config, step
        self.lr_scheduler = None
        self.has_optimizer = False

    def available(self) -> list[str]:
        return list(self.tensors)

    def optimizer_step(self) -> int:
        return 0

    def full(self, kind: str) -> dict[str, torch.Tensor]:
        return self.tensors[kind]
