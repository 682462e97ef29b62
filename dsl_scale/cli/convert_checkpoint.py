"""Convert a checkpoint: consolidate ZeRO/TP/PP shards, reshard for a new layout, export/import Hugging Face MDLM.

    python tools/convert_checkpoint.py SRC DST --to consolidated|deepspeed|hf-mdlm [--tp N --pp M]
                                       [--ema] [--dtype fp32|bf16] [--no-optimizer] [--seq-len L]
    dsl-convert-checkpoint SRC DST --to ...        (the console script: the same command)

SRC: one of our runs (or its checkpoints/ or a step_XXXXXXXX directory) at any TP × PP × ZeRO layout, a
consolidated directory, a Hugging Face MDLM directory, or the MDLM reference code's Lightning `.ckpt`.
DST must not exist; it appears only when the conversion has finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from dsl_scale.checkpoint.convert import TARGETS, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--to", required=True, choices=TARGETS)
    parser.add_argument("--tp", type=int, default=1, help="--to deepspeed: the tensor-parallel size to resume at")
    parser.add_argument("--pp", type=int, default=1, help="--to deepspeed: the pipeline-parallel size to resume at")
    parser.add_argument("--ema", action="store_true", help="--to hf-mdlm: export the EMA weights")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights' dtype (moments stay fp32)")
    parser.add_argument("--no-optimizer", action="store_true", help="leave AdamW's state out")
    parser.add_argument("--seq-len", type=int, default=1024,
                        help="Lightning import: the model's sequence length (not stored in the checkpoint)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON summary
            summary = convert(args.src, args.dst, args.to, tp=args.tp, pp=args.pp, ema=args.ema, dtype=args.dtype,
                              optimizer=not args.no_optimizer, seq_len=args.seq_len)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, RuntimeError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for warning in summary.pop("warnings"):
        print(f"warning: {warning}", file=sys.stderr)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary))
    return 0
