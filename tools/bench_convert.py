"""Checkpoint conversion throughput on a `small` (MDLM OWT-sized, ~170M parameters) checkpoint, beside `cp`
of the same bytes.

    python tools/bench_convert.py [--json] [--checkpoint RUN_OR_TAG_DIR] [--work /tmp/bench_convert] [--model small]

Without --checkpoint, a real one is made first: one training step of `small` at TP2 (2 processes, ZeRO-1,
L = 32, EMA on), so the source holds weights, EMA and AdamW moments sharded the way training leaves them.
Each row times one conversion and then `cp -r` of the files it had to read (the file cache is warm for
both: the machine is shared and caches cannot be dropped). `vs cp` = conversion time / cp time. Each
conversion runs in a fresh process whose peak resident memory is reported (the model's fp32 weights alone
are ~680 MB; the sharded source with EMA and AdamW moments ~2.7 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dsl_scale.checkpoint.source import open_checkpoint
from dsl_scale.parallel.topology import free_port

REPO = Path(__file__).resolve().parent.parent


def make_checkpoint(work: Path, model: str) -> Path:
    run_dir = work / f"{model}_tp2"
    if not (run_dir / "checkpoints" / "latest").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = [f"model={model}", "model.seq_len=32", "data.path=data/wikipedia-sample-L32", f"run_dir={run_dir}",
                     "parallel.tp=2", "parallel.zero_stage=1", "train.steps=1", "train.global_batch=2",
                     "train.micro_batch=1", "train.eval_examples=2", "train.save_every=1", "train.log_every=1"]
        command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2",
                   "--master_port", str(free_port()), str(REPO / "launchers" / "pretrain.py"), *overrides]
        subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    return run_dir


def size_of(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def timed_cp(paths: list[Path], work: Path) -> float:
    target = work / "cp_copy"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    started = time.perf_counter()
    subprocess.run(["cp", "-r", *map(str, paths), str(target)], check=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return seconds


_CHILD = """
import json, resource, sys, time
from dsl_scale.checkpoint.convert import convert
started = time.perf_counter()
convert({src!r}, {dst!r}, **{kwargs!r})
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def convert_in_subprocess(src: Path, dst: Path, kwargs: dict) -> tuple[float, int]:
    """(seconds inside convert(), the process's peak resident memory in bytes): a fresh process per case."""
    code = _CHILD.format(src=str(src), dst=str(dst), kwargs=kwargs)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"conversion {src} → {dst} failed:\n{result.stderr[-2000:]}")
    result = json.loads(result.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak"]


def measure(source: Path, work: Path) -> list[dict]:
    tag_dir = open_checkpoint(source).path
    weights_only = [p for p in tag_dir.iterdir() if "optim_states" not in p.name]
    cases = [  # (name, source, destination, convert kwargs, files it reads)
        ("sharded → consolidated", tag_dir, "consolidated", {"to": "consolidated"}, [tag_dir]),
        ("sharded → consolidated, no optimizer", tag_dir, "weights", {"to": "consolidated", "optimizer": False},
         weights_only),
        ("consolidated → hf-mdlm", work / "consolidated", "hf", {"to": "hf-mdlm"},
         [work / "consolidated" / "model.safetensors"]),
        ("hf-mdlm → consolidated", work / "hf", "back", {"to": "consolidated"}, [work / "hf" / "model.safetensors"]),
        ("consolidated → deepspeed (TP2·PP2)", work / "consolidated", "resumable",
         {"to": "deepspeed", "tp": 2, "pp": 2}, [work / "consolidated"]),
    ]
    rows = []
    for name, src, dst, kwargs, reads in cases:
        shutil.rmtree(work / dst, ignore_errors=True)
        seconds, peak = convert_in_subprocess(src, work / dst, kwargs)
        cp_seconds = timed_cp(reads, work)
        read, written = size_of(reads), size_of([work / dst])
        rows.append({"conversion": name, "seconds": seconds, "read_mb": read / 1e6, "written_mb": written / 1e6,
                     "mb_per_s": read / 1e6 / seconds,
                     "peak_rss_mb": peak / 1e6, "cp_seconds": cp_seconds, "vs_cp": seconds / cp_seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result JSON as the last line")
    parser.add_argument("--checkpoint", help="an existing run or tag directory (default: make a small TP2 one)")
    parser.add_argument("--work", default="/tmp/bench_convert")
    parser.add_argument("--model", default="small", help="model preset of the checkpoint made without --checkpoint")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.checkpoint) if args.checkpoint else make_checkpoint(work, args.model)
    rows = measure(source, work)
    print(f"source {open_checkpoint(source).path} (machine shared: timings are noisy)")
    print(f"{'conversion':<40}{'read MB':>9}{'written MB':>11}{'s':>8}{'MB/s':>8}{'peak RSS MB':>12}{'cp s':>8}"
          f"{'vs cp':>7}")
    for r in rows:
        print(f"{r['conversion']:<40}{r['read_mb']:>9.0f}{r['written_mb']:>11.0f}{r['seconds']:>8.2f}"
              f"{r['mb_per_s']:>8.0f}{r['peak_rss_mb']:>12.0f}{r['cp_seconds']:>8.2f}{r['vs_cp']:>7.1f}")
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
