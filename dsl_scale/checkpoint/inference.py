"""A trained checkpoint (any kind source.py opens: ours at any TP × PP × ZeRO layout, consolidated, a Hugging
Face MDLM directory or Hub id, a Lightning file) as a model for inference in
one process, on this rank's compute device (core/device.py) and in the precision asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dsl_scale.checkpoint.source import open_checkpoint
from dsl_scale.config import Config, config_from_saved
from dsl_scale.core.device import compute_device
from dsl_scale.model import DiT
from dsl_scale.model.factory import build_dit
from dsl_scale.tokenizer import Tokenizer, get_tokenizer

INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: DiT  # eval mode, on `device`, parameters in `precision`
    train_config: Config
    tokenizer: Tokenizer
    checkpoint_dir: Path
    weights: str  # "ema" or "model"
    device: torch.device
    precision: str  # "fp32" or "bf16" (resolved)


def inference_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 on an accelerator (what training used there), fp32 on CPU (bf16 matmuls are slow on CPUs)."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {INFERENCE_PRECISIONS}")
    if precision == "auto":
        return "fp32" if device.type == "cpu" else "bf16"
    return precision


def place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`model` on `device` with its floating-point parameters in `dtype`; buffers keep their dtype, as in training
    (rotary's fp32 frequencies: in bf16 the angles are off by up to 0.45 rad at L = 1024)."""
    model = model.to(device)
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    return model


def load_for_inference(checkpoint: str | Path, weights: str = "auto", precision: str = "auto",
                       device: torch.device | None = None) -> LoadedModel:
    """Needs megatron-core's process groups (a world of one is enough: see parallel.topology). The model is
    built and loaded on the CPU, then moved to `device` (default: compute_device()) in `precision`."""
    device = compute_device() if device is None else torch.device(device)
    resolved = inference_precision(precision, device)
    opened = open_checkpoint(checkpoint)
    tag_dir = opened.path
    if not opened.config:
        raise KeyError(f"{tag_dir} ({opened.kind}) carries no run config: sampling needs our run, a consolidated "
                       "or a Hugging Face MDLM directory")
    train_cfg = config_from_saved(opened.config)
    tokenizer = get_tokenizer(train_cfg.data.tokenizer)
    model = build_dit(train_cfg.model, tokenizer.vocab_size, train_cfg.train.seed,
                      causal=train_cfg.objective.name == "ar", objective=train_cfg.objective,
                      mask_id=tokenizer.mask_id)
    state, which = opened.weights(weights)
    result = model.load_state_dict(state, strict=False)
    # megatron's _extra_state is always empty; rotary frequencies are recomputed when a directory leaves them out
    missing = [k for k in result.missing_keys if not k.endswith(("_extra_state", "inv_freq"))]
    if missing or result.unexpected_keys:
        raise KeyError(f"{tag_dir}: weights do not fit the model (missing {missing[:5]}, "
                       f"unexpected {result.unexpected_keys[:5]})")
    model = place(model, device, _DTYPES[resolved])
    return LoadedModel(model.eval(), train_cfg, tokenizer, tag_dir, which, device, resolved)
