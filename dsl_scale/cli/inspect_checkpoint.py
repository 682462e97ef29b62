"""Describe a checkpoint: format and layout, step, parameter count, dtypes, tensor names and shapes, size on disk.

    python tools/inspect_checkpoint.py PATH [--keys] [--json]     (or the console script: dsl-inspect-checkpoint)

PATH: anything checkpoint/source.py opens: a run (or its checkpoints/ or a step directory) at any layout, a
consolidated or Hugging Face MDLM directory, a Hub id in the local cache, a model.safetensors or a Lightning `.ckpt`.
Only safetensors headers and weights-only torch files are read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections import Counter
from pathlib import Path

from dsl_scale.checkpoint.safe_load import safetensors_metadata
from dsl_scale.checkpoint.source import open_checkpoint


def describe(path: str | Path) -> dict:
    opened = open_checkpoint(path)
    kind, where = opened.kind, opened.path
    if kind == "hf-mdlm":
        info = json.loads((where / "config.json").read_text())
        tensors = {}
        for file in sorted(where.glob("*.safetensors")):
            tensors.update(safetensors_metadata(file))
        files = sorted(p for p in where.iterdir() if p.is_file())
        return _summary(kind, where, None, {k: info.get(k) for k in ("hidden_dim", "n_blocks", "n_heads")},
                        tensors, files, ["model"])
    if kind == "safetensors":
        return _summary(kind, where, None, {}, safetensors_metadata(where), [where], ["model"])
    source = opened.reader
    if kind == "consolidated":
        tensors = safetensors_metadata(source.dir / "model.safetensors")
        layout = {"format": "consolidated (layout-free)"}
        return _summary(kind, source.dir, source.step, layout, tensors, source.files(), source.available())
    if kind == "lightning":
        model = source.full("model")
        tensors = {k: (str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in model.items()}
        return _summary(kind, where, None, {}, tensors, [where], source.available())
    model = source.full("model")
    tensors = {k: (source.saved_dtype(k), list(v.shape)) for k, v in model.items()}
    layout = {"tp": source.tp, "pp": source.pp, "dp": source.dp, "zero_stage": source.zero_stage}
    return _summary("deepspeed", source.dir, source.step, layout, tensors, source.files(), source.available())


def _summary(kind, path, step, layout, tensors, files, contents) -> dict:
    params = {k: v for k, v in tensors.items() if not k.endswith(("inv_freq", "converter.keys"))}
    return {
        "path": str(path), "format": kind, "step": step, "layout": layout, "contents": contents,
        "parameters": sum(math.prod(shape) for _, shape in params.values()),
        "dtypes": dict(Counter(dtype for dtype, _ in tensors.values())),
        "tensors": {k: {"dtype": d, "shape": s} for k, (d, s) in tensors.items()},
        "files": len(files), "bytes_on_disk": sum(f.stat().st_size for f in files),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--keys", action="store_true", help="list every tensor's name, dtype and shape")
    parser.add_argument("--json", action="store_true", help="print the whole description as JSON")
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries' import-time notices must not spoil --json
            info = describe(args.path)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError, PermissionError) as err:  # CheckpointError too
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['path']}\n  format      {info['format']}  {info['layout']}\n  step        {info['step']}\n"
          f"  contents    {', '.join(info['contents'])}\n  parameters  {info['parameters']:,}\n"
          f"  dtypes      {info['dtypes']}\n  on disk     {info['bytes_on_disk'] / 2**20:.1f} MiB in "
          f"{info['files']} files\n  tensors     {len(info['tensors'])}")
    if args.keys:
        for name, t in info["tensors"].items():
            print(f"    {name:60s} {t['dtype']:10s} {tuple(t['shape'])}")
    return 0
