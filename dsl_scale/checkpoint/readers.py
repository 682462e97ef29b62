"""The readers of every checkpoint kind behind one interface, `CheckpointReader`:
- our DeepSpeed training checkpoints at any TP × PP × ZeRO layout (zero_reader.TrainingCheckpoint);
- consolidated, layout-free directories (consolidated.ConsolidatedCheckpoint);
- Hugging Face MDLM directories and the MDLM code's Lightning files, read into memory (TensorSource).

Files are read with `torch.load(weights_only=True)` or from safetensors: nothing in a checkpoint is
unpickled as code (safe_load.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from dsl_scale.checkpoint import layout
from dsl_scale.checkpoint.consolidated import ConsolidatedCheckpoint, is_consolidated
from dsl_scale.checkpoint.zero_reader import TrainingCheckpoint


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


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir, its checkpoints/ dir (both via `latest`), or one tag dir → the tag dir."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        if (root / layout.LATEST).is_file():
            return root / layout.read_latest(root)
    markers = (layout.model_states_name(0), layout.zero3_model_states_name(0, 0))
    if any((path / name).is_file() for name in markers) or is_consolidated(path):
        return path
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a run directory, its checkpoints/ directory (with a `latest` "
        f"file) or a checkpoint directory holding {' or '.join(markers)} or a consolidated config.json"
    )


def open_checkpoint(tag_dir: str | Path) -> CheckpointReader:
    tag_dir = Path(tag_dir)
    return ConsolidatedCheckpoint(tag_dir) if is_consolidated(tag_dir) else TrainingCheckpoint(tag_dir)


def load_training_config(tag_dir: Path) -> dict:
    """The run config saved with the checkpoint."""
    config = open_checkpoint(tag_dir).config
    if not config:
        raise KeyError(f"{tag_dir} carries no run config")
    return config


def load_model_weights(tag_dir: Path, weights: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """Full fp32 weights (and buffers) of a checkpoint saved at any TP × PP × ZeRO layout.
    weights: 'ema', 'model' or 'auto' (EMA when saved). Returns (state_dict, which weights were loaded)."""
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r} must be 'auto', 'ema' or 'model'")
    checkpoint = open_checkpoint(tag_dir)
    has_ema = "ema" in checkpoint.available()
    if weights == "ema" and not has_ema:
        raise FileNotFoundError(f"weights=ema but {tag_dir} holds no EMA files (trained with train.ema=0?)")
    use_ema = weights == "ema" or (weights == "auto" and has_ema)
    state = {k: v.float() for k, v in checkpoint.full("model").items()}
    if use_ema:
        state.update({k: v.float() for k, v in checkpoint.full("ema").items()})
    return state, "ema" if use_ema else "model"


def open_source(path: str | Path, seq_len: int = 1024) -> CheckpointReader:
    """Our training checkpoint (run, checkpoints/ or tag directory), a consolidated directory, a Hugging
    Face MDLM directory, or the MDLM reference code's Lightning checkpoint file (.ckpt)."""
    from dsl_scale.checkpoint.hf_mdlm import is_hf_dir, read_hf, read_lightning

    path = Path(path)
    if path.is_file():
        weights, ema, config = read_lightning(path, seq_len=seq_len)
        return TensorSource({"model": weights, **({"ema": ema} if ema is not None else {})}, config)
    if is_hf_dir(path):
        weights, config = read_hf(path)
        return TensorSource({"model": weights}, config)
    if is_consolidated(path):
        return ConsolidatedCheckpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return open_checkpoint(resolve_checkpoint(path))
