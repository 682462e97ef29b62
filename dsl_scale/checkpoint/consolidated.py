"""The consolidated (layout-free) checkpoint: whole tensors under our parameter names, no sharding.

A directory holding
  model.safetensors                    weights and buffers (fp32 unless converted with --dtype bf16)
  ema.safetensors                      EMA weights, when the run kept them
  optimizer.exp_avg.safetensors        AdamW's moments (fp32), unless converted with --no-optimizer
  optimizer.exp_avg_sq.safetensors
  config.json                          {"format", "step", "optimizer_step", "lr_scheduler", "config": run config}
The same files inside a `checkpoints/step_XXXXXXXX/` tag directory make a checkpoint the trainer resumes
from at any TP/PP/DP layout (checkpoint/training.py slices them on load).
Each kind is read and written on its own, so a conversion holds about one model's worth of tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dsl_scale.checkpoint.safe_load import load_safetensors

FORMAT = "dsl_scale.consolidated"
CONFIG = "config.json"
FILES = {"model": "model.safetensors", "ema": "ema.safetensors",
         "exp_avg": "optimizer.exp_avg.safetensors", "exp_avg_sq": "optimizer.exp_avg_sq.safetensors"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def is_consolidated(path: str | Path) -> bool:
    file = Path(path) / CONFIG
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return False


class ConsolidatedCheckpoint:
    """Reads a consolidated directory (a `readers.CheckpointReader`)."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        file = self.dir / CONFIG
        try:
            info = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RuntimeError(f"could not read {file} (truncated or corrupt?): {err}") from err
        if info.get("format") != FORMAT:
            raise ValueError(f"{file} is not a {FORMAT} config (format={info.get('format')!r})")
        self.info = info
        self.config: dict = info.get("config") or {}
        self.step = int(info.get("step", 0))
        self.lr_scheduler = info.get("lr_scheduler")
        self.has_optimizer = all((self.dir / FILES[k]).is_file() for k in ("exp_avg", "exp_avg_sq"))

    def available(self) -> list[str]:
        return [k for k, f in FILES.items() if (self.dir / f).is_file()]

    def optimizer_step(self) -> int:
        return int(self.info.get("optimizer_step", self.step))

    def full(self, kind: str) -> dict[str, torch.Tensor]:
        if kind not in self.available():
            raise KeyError(f"{self.dir} holds no {kind!r} tensors (it has: {', '.join(self.available())})")
        return load_safetensors(self.dir / FILES[kind])

    def local(self, kind: str, targets: dict, tp_rank: int) -> dict[str, torch.Tensor]:
        """This TP rank's slice of each tensor named in `targets` (name → an object with the local `shape`
        and, when split, `partition_dim`), reading only those bytes; names the file lacks are left out."""
        from safetensors import safe_open

        file = self.dir / FILES[kind]
        out = {}
        try:
            with safe_open(str(file), framework="pt") as f:
                names = set(f.keys())
                for name, target in targets.items():
                    if name not in names:
                        continue
                    piece = f.get_slice(name)
                    full_shape, shape = tuple(piece.get_shape()), tuple(target.shape)
                    if full_shape == shape:
                        out[name] = f.get_tensor(name)
                        continue
                    dim = getattr(target, "partition_dim", 0)
                    if len(full_shape) != len(shape) or full_shape[dim] != shape[dim] * (full_shape[dim] // shape[dim]):
                        raise ValueError(f"{file}: {name} has shape {full_shape}, which does not split into {shape}")
                    index = [slice(None)] * len(shape)
                    index[dim] = slice(tp_rank * shape[dim], (tp_rank + 1) * shape[dim])
                    out[name] = piece[tuple(index)]
        except (OSError, RuntimeError) as err:
            raise RuntimeError(f"could not read tensor file {file} (truncated or corrupt?): {err}") from err
        return out

    def files(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_file())


_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def save_tensors(tensors: dict[str, torch.Tensor], file: Path, dtype: torch.dtype | None = None) -> None:
    """A safetensors file written one tensor at a time (safetensors' own writer first copies every tensor
    into bytes, which would double the memory a conversion needs). Floating tensors are cast to `dtype`."""
    def cast(v: torch.Tensor) -> torch.Tensor:
        return v.to(dtype) if dtype is not None and v.is_floating_point() else v

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, value in tensors.items():
        kind = cast(value[:0] if value.dim() else value.reshape(1)[:0]).dtype
        if kind not in _ST_DTYPES:
            raise TypeError(f"{name}: dtype {kind} cannot be stored in safetensors here")
        size = value.numel() * torch.empty((), dtype=kind, device="cpu").element_size()
        header[name] = {"dtype": _ST_DTYPES[kind], "shape": list(value.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)  # the data starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for value in tensors.values():
            data = cast(value).contiguous().reshape(-1)
            if data.numel():
                f.write(memoryview(data.view(torch.uint8).numpy()))


def write_consolidated(source, out_dir: Path, dtype: str = "fp32", optimizer: bool = True,
                       config: dict | None = None) -> list[str]:
    """Write every kind `source` has into `out_dir` (which exists, empty); returns the kinds written."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    written = []
    for kind in source.available():
        if kind in ("exp_avg", "exp_avg_sq") and not optimizer:
            continue
        tensors = source.full(kind)
        save_tensors(tensors, out_dir / FILES[kind], None if kind in ("exp_avg", "exp_avg_sq") else DTYPES[dtype])
        del tensors
        written.append(kind)
    info = {
        "format": FORMAT, "format_version": 1, "step": source.step,
        "optimizer_step": source.optimizer_step() if "exp_avg" in written else None,
        "lr_scheduler": _jsonable(source.lr_scheduler), "dtype": dtype, "contents": written,
        "config": config if config is not None else source.config,
    }
    (out_dir / CONFIG).write_text(json.dumps(info, indent=1))
    return written


def _jsonable(state):
    if state is None:
        return None
    try:
        return json.loads(json.dumps(state))
    except TypeError:
        return None
