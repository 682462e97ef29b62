"""Reading our training checkpoints outside the trainer, in one process.

A tag directory holds either DeepSpeed's sharded files (any TP × PP × ZeRO layout: zero_reader.py) or a
consolidated, layout-free checkpoint (consolidated.py). Files are read with `torch.load(weights_only=True)`
or from safetensors: nothing in a checkpoint is unpickled as code (safe_load.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dsl_scale.checkpoint_io.consolidated import ConsolidatedCheckpoint, is_consolidated
from dsl_scale.checkpoint_io.zero_reader import TrainingCheckpoint

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir, its checkpoints/ dir (both via `latest`), or one tag dir → the tag dir."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        pointer = root / "latest"
        if pointer.is_file():
            tag_dir = root / pointer.read_text().strip()
            if not tag_dir.is_dir():
                raise FileNotFoundError(f"{pointer} names {tag_dir}, which does not exist")
            return tag_dir
    if (path / MODEL_STATES).is_file() or (path / ZERO3_MODEL_STATES).is_file() or is_consolidated(path):
        return path
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a run directory, its checkpoints/ directory (with a "
        f"`latest` file) or a checkpoint directory holding {MODEL_STATES}, {ZERO3_MODEL_STATES} or a "
        "consolidated config.json"
    )


def open_checkpoint(tag_dir: str | Path) -> TrainingCheckpoint | ConsolidatedCheckpoint:
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
