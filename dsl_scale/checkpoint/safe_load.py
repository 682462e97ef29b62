"""Reading tensor files without running code from them.

safetensors files are plain data. `.pt`/`.ckpt` files go through `torch.load(weights_only=True)`, which
rebuilds only tensors and plain containers; DeepSpeed's optimizer files additionally name a few of its
own data classes (an enum, the loss scaler's settings, a (start, numel) pair), which are allowed by
name. Anything else is refused with a message that says how to override, for files you made yourself.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

OVERRIDE = "DSL_SCALE_TRUST_PICKLE"
_REFUSAL = (
    "{file} needs arbitrary Python objects to load ({why}); refusing to unpickle a file that could run code. "
    f"If you made this file yourself and trust it, set {OVERRIDE}=1 to load it with weights_only=False."
)


def _deepspeed_globals() -> list:
    allowed = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    except ImportError:  # reading without DeepSpeed installed: its optimizer files cannot be read then
        pass
    return allowed


def torch_load(file: str | Path, mmap: bool = True):
    """torch.load(weights_only=True) on CPU, memory-mapped (tensors are paged in only when used)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {file} is missing")
    if file.stat().st_size == 0:
        raise RuntimeError(f"checkpoint file {file} is empty (truncated?)")
    trusted = os.environ.get(OVERRIDE) == "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(file, map_location="cpu", weights_only=not trusted, mmap=mmap)
    except Exception as err:
        if "Weights only load failed" in str(err) or "Unsupported global" in str(err):
            why = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
            raise PermissionError(_REFUSAL.format(file=file, why=why)) from None
        if mmap and "mmap" in str(err):  # legacy (non-zip) files cannot be memory-mapped
            return torch_load_plain(file)
        raise RuntimeError(f"could not read checkpoint file {file} (truncated or corrupt?): {err}") from err


def torch_load_plain(file: Path):
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(file, map_location="cpu", weights_only=os.environ.get(OVERRIDE) != "1")
    except Exception as err:
        raise RuntimeError(f"could not read checkpoint file {file} (truncated or corrupt?): {err}") from err


def load_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"tensor file {file} is missing")
    try:
        return load_file(str(file))
    except Exception as err:
        raise RuntimeError(f"could not read tensor file {file} (truncated or corrupt?): {err}") from err


def safetensors_metadata(file: str | Path) -> dict[str, tuple[str, list[int]]]:
    """name → (dtype, shape) from the header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: (str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as err:
        raise RuntimeError(f"could not read tensor file {file} (truncated or corrupt?): {err}") from err
