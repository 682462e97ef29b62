"""Reading our training checkpoints (DeepSpeed layout) outside the trainer, in one process.

Loads with `torch.load(weights_only=True)`: nothing in a checkpoint is unpickled as code.
"""

from __future__ import annotations

from pathlib import Path

import torch

MODEL_STATES = "mp_rank_00_model_states.pt"


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
    if (path / MODEL_STATES).is_file():
        return path
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a run directory, its checkpoints/ directory (with a "
        f"`latest` file) or a checkpoint directory holding {MODEL_STATES}"
    )


def _load(file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {file} is missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"could not read checkpoint file {file} (truncated or corrupt?): {err}") from err


def load_training_config(tag_dir: Path) -> dict:
    return _load(tag_dir / MODEL_STATES)["config"]


def load_model_weights(tag_dir: Path, weights: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """Full fp32 weights of a TP=1, PP=1 checkpoint. weights: 'ema', 'model' or 'auto' (EMA when saved).

    Returns (state_dict, which weights were loaded).
    """
    states = _load(tag_dir / MODEL_STATES)
    if (states.get("mp_world_size") or 1) != 1:
        raise NotImplementedError(
            f"{tag_dir} was saved with model parallelism (mp_world_size={states['mp_world_size']}); "
            "consolidate it first with tools/convert_checkpoint.py"
        )
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r} must be 'auto', 'ema' or 'model'")
    module = states["module"]
    if not _complete(module, states["param_shapes"]):
        raise NotImplementedError(
            f"{tag_dir} holds ZeRO-3 partitions; consolidate it first with tools/convert_checkpoint.py"
        )
    state = {k: v.float() if torch.is_tensor(v) else v for k, v in module.items()}
    ema_file = tag_dir / "ema_tp00_pp00_dp000.pt"
    if weights == "model" or (weights == "auto" and not ema_file.exists()):
        return state, "model"
    if not ema_file.exists():
        raise FileNotFoundError(f"weights=ema but {ema_file} does not exist (trained with train.ema=0?)")
    ema = _load(ema_file)
    if not _complete(ema, states["param_shapes"]) or any(tuple(ema[k].shape) != tuple(state[k].shape)
                                                         for k in ema):
        raise NotImplementedError(f"{ema_file} holds a ZeRO-3 partition; consolidate the checkpoint first")
    state.update({k: v.float() for k, v in ema.items()})
    return state, "ema"


def _complete(state: dict, param_shapes) -> bool:
    if any(torch.is_tensor(t) and t.numel() == 0 for t in state.values()):
        return False
    shapes = {}
    for group in param_shapes or []:
        shapes.update(group)
    return all(name in state and tuple(state[name].shape) == tuple(shape) for name, shape in shapes.items())
