"""A trained checkpoint (saved at any TP × PP × ZeRO layout, or consolidated) as a model for inference in
one process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dsl_scale.checkpoint.readers import load_model_weights, load_training_config, resolve_checkpoint
from dsl_scale.config import Config, config_from_saved
from dsl_scale.model import DiT
from dsl_scale.model.factory import build_dit
from dsl_scale.tokenizer import Tokenizer, get_tokenizer


@dataclass
class LoadedModel:
    model: DiT  # eval mode
    train_config: Config
    tokenizer: Tokenizer
    checkpoint_dir: Path
    weights: str  # "ema" or "model"


def load_for_inference(checkpoint: str | Path, weights: str = "auto") -> LoadedModel:
    """Needs megatron-core's process groups (a world of one is enough: see parallel.topology)."""
    tag_dir = resolve_checkpoint(checkpoint)
    saved = load_training_config(tag_dir)
    train_cfg = config_from_saved(saved)
    tokenizer = get_tokenizer(train_cfg.data.tokenizer)
    model = build_dit(train_cfg.model, tokenizer.vocab_size, train_cfg.train.seed,
                      causal=train_cfg.objective.name == "ar", objective=train_cfg.objective,
                      mask_id=tokenizer.mask_id)
    state, which = load_model_weights(tag_dir, weights)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]  # megatron's, always empty
    if missing or result.unexpected_keys:
        raise KeyError(f"{tag_dir}: weights do not fit the model (missing {missing[:5]}, "
                       f"unexpected {result.unexpected_keys[:5]})")
    return LoadedModel(model.eval(), train_cfg, tokenizer, tag_dir, which)
