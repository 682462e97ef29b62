"""Starting the real launchers from tests: deepspeed, torchrun and plain python, on free ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dsl_scale.parallel.topology import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def command(launcher: str, script: str, ranks: int, overrides: list[str]) -> list[str]:
    target = [str(REPO / script if "/" in script else REPO / "launchers" / script), *overrides]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()), *target]
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(free_port()),
                *target]
    assert ranks == 1
    return [sys.executable, *target]


def run(launcher: str, script: str, ranks: int, overrides: list[str], timeout: float = 300):
    result = subprocess.run(command(launcher, script, ranks, overrides), env=env(), cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{launcher} run failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def start(launcher: str, script: str, ranks: int, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command(launcher, script, ranks, overrides), env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def micro_run(data: Path, run_dir: Path, steps: int, **extra) -> list[str]:
    """Overrides for a seconds-long `micro` training run (L 64, global batch 4 in micro-batches of 2, no
    dropout), `extra` replacing or adding `key=value` settings."""
    base = {
        "model": "micro", "model.seq_len": 64, "model.dropout": 0.0, "data.path": data, "run_dir": run_dir,
        "train.steps": steps, "train.global_batch": 4, "train.micro_batch": 2, "train.eval_every": 100,
        "train.eval_examples": 4, "train.save_every": 100, "train.log_every": 1, "train.ema": 0.0,
        "optim.lr": 2e-3, "optim.warmup_steps": 2, **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]
