"""What is at this path? The one answer every command uses (`init_from=`, `checkpoint=` of sample and evaluate,
`scorer=`, convert, inspect).

`open_checkpoint(path_or_id)` accepts
- one of our runs, its `checkpoints/` directory (both through `latest`) or one tag directory, at any
  TP × PP × ZeRO layout ("training"), or a layout-free tag ("consolidated");
- a consolidated directory ("consolidated");
- a Hugging Face MDLM directory: ours (`--to hf-mdlm`) or the reference layout of `kuleshov-group/mdlm-owt`
  (`backbone.*` tensors and its config.json, with or without its modeling files) ("hf-mdlm");
- the MDLM reference code's Lightning `.ckpt` file ("lightning");
- a bare `model.safetensors` of ours, or a directory (a run's `final/`) holding one ("safetensors");
- a Hugging Face Hub id (`kuleshov-group/mdlm-owt`), read from huggingface_hub's cache (downloaded first
  unless HF_HUB_OFFLINE=1).
It reads only what says what the checkpoint is (a config.json, safetensors headers, the first model-states
file); the tensors are read when `weights` or `reader` is first used. Bad input is one `CheckpointError`
naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsl_scale.checkpoint import hf_mdlm, layout
from dsl_scale.checkpoint.consolidated import ConsolidatedCheckpoint, is_consolidated
from dsl_scale.checkpoint.readers import CheckpointReader, TensorSource
from dsl_scale.checkpoint.safe_load import load_safetensors

KINDS = ("training", "consolidated", "hf-mdlm", "lightning", "safetensors")
SHAPE_KEYS = ("hidden", "n_blocks", "n_heads", "cond_dim", "mlp_ratio")
# The model preset that takes its shape from `init_from` (configs/model/from_checkpoint.yaml).
FROM_CHECKPOINT = "from_checkpoint"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRAINING_MARKERS = (layout.model_states_name(0), layout.zero3_model_states_name(0, 0))


class CheckpointError(ValueError):
    """A path or id that is not a readable checkpoint; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    """An opened checkpoint: its kind, where it lies, its run config (our schema's fields) and, on demand,
    its tensors."""

    source: str  # what was asked for (a path or a Hub id)
    kind: str  # one of KINDS
    path: Path  # the tag directory, consolidated or HF directory, or the file that is read
    seq_len: int = 1024  # a Lightning file does not store it
    _reader: CheckpointReader | None = field(default=None, repr=False)

    @property
    def reader(self) -> CheckpointReader:
        """Whole tensors by kind ("model", "ema", "exp_avg", "exp_avg_sq"), the step and LR schedule."""
        if self._reader is None:
            self._reader = _make_reader(self)
        return self._reader

    @property
    def config(self) -> dict:
        """The run config saved with it (an HF directory's or Lightning file's: our defaults around its shape)."""
        if self.kind == "hf-mdlm":
            return hf_mdlm.hf_run_config(self.path)
        if self.kind == "safetensors":
            return {}
        return self.reader.config

    @property
    def step(self) -> int:
        return 0 if self.kind in ("hf-mdlm", "safetensors") else int(self.reader.step)

    def shape(self) -> dict[str, int] | None:
        """The model's architecture fields (SHAPE_KEYS and time_conditioning); None when it carries no config."""
        model = (self.config or {}).get("model")
        if not model:
            return None
        return {k: model[k] for k in (*SHAPE_KEYS, "time_conditioning") if k in model}

    def weights(self, which: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
        """Whole fp32 weights and buffers: 'ema', 'model' or 'auto' (the EMA when saved). Returns (tensors,
        which were loaded)."""
        if which not in ("auto", "ema", "model"):
            raise ValueError(f"weights={which!r} must be 'auto', 'ema' or 'model'")
        reader = self.reader
        has_ema = "ema" in reader.available()
        if which == "ema" and not has_ema:
            raise CheckpointError(f"weights=ema but {self.path} holds no EMA weights (trained with train.ema=0, "
                                  f"or a {self.kind} checkpoint without them)")
        use_ema = which == "ema" or (which == "auto" and has_ema)
        state = {k: v.float() if v.is_floating_point() else v for k, v in reader.full("model").items()
                 if torch.is_tensor(v)}
        if use_ema:
            state.update({k: v.float() for k, v in reader.full("ema").items()})
        return state, "ema" if use_ema else "model"

    def check_shape(self, model: Any) -> None:
        """A `model=` (ModelConfig or a dict of its fields) whose shape differs from the checkpoint's is an error
        naming both shapes."""
        saved = self.shape()
        if saved is None:
            return
        asked = {k: _get(model, k) for k in saved}
        if asked != saved:
            raise CheckpointError(
                f"{self.source} holds a model of shape {_describe(saved)}, but the config asks for "
                f"{_describe(asked)} (model={_get(model, 'name')}); give model={FROM_CHECKPOINT} (or no model=) "
                "to take the checkpoint's shape")


def open_checkpoint(path_or_id: str | Path, seq_len: int = 1024) -> Checkpoint:
    """The checkpoint at a path (see the module docstring for what is accepted), or of a Hub id."""
    name = str(path_or_id)
    path = Path(path_or_id).expanduser()
    if not path.exists() and is_hub_id(name):
        try:
            path = hub_snapshot(name)
        except CheckpointError as err:
            raise CheckpointError(f"no file or directory {name}; {err}") from err.__cause__
        if not hf_mdlm.is_hf_dir(path):
            raise CheckpointError(f"{name} (Hub snapshot {path}) is not a Hugging Face MDLM model: its config.json "
                                  "has no model_type 'mdlm'")
    checkpoint = _classify(name, path, seq_len)
    try:
        if checkpoint.kind == "hf-mdlm":
            hf_mdlm.check_hf_dir(checkpoint.path)  # every tensor present, each of the shape config.json implies
        elif checkpoint.kind == "lightning":
            checkpoint.reader  # noqa: B018 (reads and checks the file now: its errors belong to opening)
    except (ValueError, KeyError) as err:
        raise CheckpointError(str(err).strip("'\"")) from err
    return checkpoint


def is_hub_id(name: str) -> bool:
    """`owner/name` that is not a local path (./x/y or an absolute path is always a path)."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of a Hub model: from huggingface_hub's cache (HF_HUB_CACHE / HF_HOME), fetched
    into it first unless HF_HUB_OFFLINE is set."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HUB_CACHE") or None  # read now: huggingface_hub read it when it was imported
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=offline))
    except LocalEntryNotFoundError as err:
        where = cache or "huggingface_hub's default cache"
        raise CheckpointError(
            f"Hub id {repo_id} is not in the Hugging Face cache ({where})"
            + (" and HF_HUB_OFFLINE is set" if offline else " and could not be downloaded")
            + f": run `huggingface-cli download {repo_id}` on a machine with network access") from err
    except Exception as err:  # network, authentication, a missing repository: say which id
        raise CheckpointError(f"could not fetch Hub id {repo_id}: {str(err).splitlines()[0]}") from err


def hf_directory(path_or_id: str) -> Path:
    """A local Hugging Face model directory (e.g. a causal LM for `scorer=`): the path itself, or a Hub id's
    cached snapshot."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if not path.exists() and is_hub_id(path_or_id):
        return hub_snapshot(path_or_id)
    raise CheckpointError(f"{path_or_id} is neither a directory nor a Hugging Face Hub id (owner/name)")


def is_ours(path_or_id: str) -> bool:
    """Whether the path holds one of our training or consolidated checkpoints (not a Hugging Face directory)."""
    try:
        return open_checkpoint(path_or_id).kind in ("training", "consolidated", "safetensors")
    except (CheckpointError, FileNotFoundError):
        return False


def resolve_model_shape(cfg: Any) -> Checkpoint | None:
    """The run config (changed in place) gets its model shape from `init_from` when the model is
    `from_checkpoint`; any other model whose shape differs from init_from's is an error naming both. Returns the
    opened init_from checkpoint (None without one), for the Checkpointer to load."""
    if not cfg.init_from:
        if cfg.model.name == FROM_CHECKPOINT:
            raise CheckpointError(f"model={FROM_CHECKPOINT} takes the shape from init_from=, which is not set")
        return None
    earlier = _earlier_start_shape(cfg)
    if earlier is not None:  # a restart of this run: its own shape (init_from may be gone by now)
        for key, value in earlier.items():
            setattr(cfg.model, key, value)
        return None
    checkpoint = open_checkpoint(cfg.init_from)
    shape = checkpoint.shape()
    if cfg.model.name == FROM_CHECKPOINT:
        if shape is None:
            raise CheckpointError(f"init_from={cfg.init_from} ({checkpoint.kind}) carries no model config: give "
                                  "its model= preset")
        for key, value in shape.items():
            setattr(cfg.model, key, value)
        cfg.model.name = f"{FROM_CHECKPOINT}:{(checkpoint.config.get('model') or {}).get('name', checkpoint.kind)}"
    else:
        checkpoint.check_shape(cfg.model)
    return checkpoint


def _earlier_start_shape(cfg: Any) -> dict | None:
    """The shape (and resolved name) an earlier start of this run took from init_from: run_dir/config.yaml,
    when this start asks for model=from_checkpoint too and may resume."""
    import yaml

    file = Path(cfg.run_dir) / "config.yaml"
    if cfg.model.name != FROM_CHECKPOINT or not cfg.train.resume or not file.is_file():
        return None
    try:
        model = (yaml.safe_load(file.read_text()) or {}).get("model") or {}
    except yaml.YAMLError:
        return None
    if not str(model.get("name", "")).startswith(FROM_CHECKPOINT + ":") or any(k not in model for k in SHAPE_KEYS):
        return None
    return {k: model[k] for k in ("name", *SHAPE_KEYS, "time_conditioning") if k in model}


# ------------------------------------------------------------------------------------------------------------


def _classify(name: str, path: Path, seq_len: int) -> Checkpoint:
    if path.is_file():
        kind = "safetensors" if path.suffix == ".safetensors" else "lightning"
        return Checkpoint(name, kind, path, seq_len)
    if not path.exists():
        raise FileNotFoundError(f"{name} does not exist (and is not a Hugging Face Hub id owner/name)")
    if hf_mdlm.is_hf_dir(path):
        return Checkpoint(name, "hf-mdlm", path, seq_len)
    if is_consolidated(path):
        return Checkpoint(name, "consolidated", path, seq_len)
    for root in (path / "checkpoints", path):
        if (root / layout.LATEST).is_file():
            return _tag(name, root / layout.read_latest(root), seq_len)
    if any((path / marker).is_file() for marker in _TRAINING_MARKERS):
        return Checkpoint(name, "training", path, seq_len)
    for candidate in (path / hf_mdlm.WEIGHTS, path / "final" / hf_mdlm.WEIGHTS):
        if candidate.is_file() and not (path / "config.json").is_file():
            return Checkpoint(name, "safetensors", candidate, seq_len)
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config} is not valid JSON: {err}") from err
        raise CheckpointError(f"{config} says model_type={model_type!r}: not a Hugging Face MDLM directory "
                              "(model_type 'mdlm') nor a consolidated checkpoint")
    raise CheckpointError(
        f"no checkpoint at {path}: expected a run directory, its checkpoints/ directory (with a `latest` file), a "
        f"checkpoint directory holding {' or '.join(_TRAINING_MARKERS)}, a consolidated or Hugging Face MDLM "
        "directory (config.json), a model.safetensors or a Lightning .ckpt")


def _tag(name: str, tag_dir: Path, seq_len: int) -> Checkpoint:
    return Checkpoint(name, "consolidated" if is_consolidated(tag_dir) else "training", tag_dir, seq_len)


def _make_reader(checkpoint: Checkpoint) -> CheckpointReader:
    from dsl_scale.checkpoint.zero_reader import TrainingCheckpoint

    kind, path = checkpoint.kind, checkpoint.path
    if kind == "training":
        return TrainingCheckpoint(path)
    if kind == "consolidated":
        return ConsolidatedCheckpoint(path)
    if kind == "hf-mdlm":
        weights, config = hf_mdlm.read_hf(path)
        return TensorSource({"model": weights}, config)
    if kind == "lightning":
        weights, ema, config = hf_mdlm.read_lightning(path, seq_len=checkpoint.seq_len)
        return TensorSource({"model": weights, **({"ema": ema} if ema is not None else {})}, config)
    return TensorSource({"model": load_safetensors(path)}, {})


def _get(model: Any, key: str) -> Any:
    return model.get(key) if isinstance(model, dict) else getattr(model, key, None)


def _describe(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())
