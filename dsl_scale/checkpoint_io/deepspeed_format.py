"""Reading our training checkpoints (DeepSpeed layout) outside the trainer, in one process.

Loads with `torch.load(weights_only=True)`: nothing in a checkpoint is unpickled as code.
"""

from __future__ import annotations

import json
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
    """The run config saved with the checkpoint (every model-parallel rank's file carries it)."""
    return _load(tag_dir / MODEL_STATES)["config"]


def load_model_weights(tag_dir: Path, weights: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """Full fp32 weights of a checkpoint saved at any TP × PP layout (ZeRO 0–2: every model-parallel rank
    wrote its whole shard). weights: 'ema', 'model' or 'auto' (EMA when saved).

    Returns (state_dict, which weights were loaded).
    """
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r} must be 'auto', 'ema' or 'model'")
    meta_file = tag_dir / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {"tp": 1, "pp": 1}
    tp, pp = int(meta["tp"]), int(meta["pp"])
    has_ema = all((tag_dir / _ema_name(t, s)).exists() for t in range(tp) for s in range(pp))
    if weights == "ema" and not has_ema:
        raise FileNotFoundError(f"weights=ema but {tag_dir} holds no EMA files (trained with train.ema=0?)")
    use_ema = weights == "ema" or (weights == "auto" and has_ema)
    state: dict = {}
    for stage in range(pp):
        dims = json.loads((tag_dir / f"partitions_pp{stage:02d}.json").read_text()) if tp > 1 else {}
        shards = []
        for t in range(tp):
            states = _load(tag_dir / f"mp_rank_{stage * tp + t:02d}_model_states.pt")
            module = dict(states["module"])
            if not _complete(module, states["param_shapes"]):
                raise NotImplementedError(
                    f"{tag_dir} holds ZeRO-3 partitions; train with train.save_final_weights=true for an "
                    "unsharded model.safetensors, or consolidate the checkpoint first"
                )
            if use_ema:
                module.update(_load(tag_dir / _ema_name(t, stage)))
            shards.append(module)
        for name, value in shards[0].items():
            if not torch.is_tensor(value):
                state[name] = value
            elif name in dims:
                state[name] = torch.cat([shard[name].float() for shard in shards], dim=dims[name])
            else:
                state[name] = value.float()
    return state, "ema" if use_ema else "model"


def _ema_name(tp_rank: int, pp_rank: int) -> str:
    return f"ema_tp{tp_rank:02d}_pp{pp_rank:02d}_dp000.pt"


def _complete(state: dict, param_shapes) -> bool:
    if any(torch.is_tensor(t) and t.numel() == 0 for t in state.values()):
        return False
    shapes = {}
    for group in param_shapes or []:
        shapes.update(group)
    return all(name in state and tuple(state[name].shape) == tuple(shape) for name, shape in shapes.items())
