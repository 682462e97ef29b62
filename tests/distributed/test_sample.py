"""Real runs of launchers/sample.py on a checkpoint from a short real training run (micro model, L = 64):
1 rank vs 2 ranks (torchrun) and batch sizes give the same samples; a killed job resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from dsl_scale.sampling import records
from tests.launching import read_jsonl, run, start

# ~6 min on a busy 2-core machine (training the checkpoint, four launches): run with tools/test.sh --all.
pytestmark = [pytest.mark.distributed, pytest.mark.slow]
N, STEPS = 12, 48


@pytest.fixture(scope="module")
def checkpoint(wiki_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sample_ckpt")
    settings = {"model": "micro", "model.seq_len": 64, "data.path": wiki_shards, "run_dir": run_dir,
                "train.steps": 3, "train.global_batch": 4, "train.micro_batch": 2, "train.save_every": 3,
                "train.eval_every": 3, "train.eval_examples": 4, "optim.lr": 1e-2, "optim.warmup_steps": 1}
    run("python", "pretrain.py", 1, [f"{k}={v}" for k, v in settings.items()])
    return run_dir


def sample_args(checkpoint: Path, out: Path, **extra) -> list[str]:
    base = {"checkpoint": checkpoint, "sampler": "remdm_loop", "sampler.eta": 0.05, "steps": STEPS,
            "num_samples": N, "seed": 11, "out": out, **extra}
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "samples.jsonl"
    run("python", "sample.py", 1, sample_args(checkpoint, out, batch_size=4))
    return read_jsonl(out)


def test_one_rank_and_two_ranks_give_the_same_samples(checkpoint, reference, tmp_path):
    out = tmp_path / "two.jsonl"
    run("torchrun", "sample.py", 2, sample_args(checkpoint, out, batch_size=1))
    two = read_jsonl(out)
    assert [r["index"] for r in reference] == [r["index"] for r in two] == list(range(N))
    assert [r["tokens"] for r in two] == [r["tokens"] for r in reference]
    assert [r["nfe"] for r in two] == [r["nfe"] for r in reference]
    # STEPS random steps and the noise-removal pass (docs/method.md §5): at most STEPS + 1 forwards
    assert all(len(r["tokens"]) == 64 and 0 < r["nfe"] <= STEPS + 1 and isinstance(r["text"], str) for r in two)
    settings = json.loads(Path(f"{out}.settings.json").read_text())
    assert settings["weights_loaded"] == "ema" and settings["world_size"] == 2
    expected = {"name": "remdm_loop", "eta": 0.05, "t_on": 0.55, "t_off": 0.05, "alpha_on": 0.9}
    assert {k: settings["sampler"][k] for k in expected} == expected
    assert settings["status"] == "complete" and settings["num_written"] == N
    assert not Path(f"{out}.parts").exists()


def test_a_killed_job_resumes_without_duplicates_or_gaps(checkpoint, reference, tmp_path):
    out = tmp_path / "killed.jsonl"
    written = lambda: len(records.collect(out))  # complete lines only, as the driver counts them
    # deepspeed's launcher keeps its workers in its process group, so killpg reaches them (torchrun's may not)
    job = start("deepspeed", "sample.py", 2, sample_args(checkpoint, out, batch_size=1))
    deadline = time.monotonic() + 240
    while job.poll() is None and time.monotonic() < deadline:
        if written() >= 3:
            os.killpg(job.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    job.wait()
    before = written()
    assert 3 <= before < N and not out.exists(), "the job must be killed part-way for this test to mean anything"

    result = run("torchrun", "sample.py", 2, sample_args(checkpoint, out, batch_size=3))
    assert f"{before} samples already written" in result.stdout
    resumed = read_jsonl(out)
    assert [r["index"] for r in resumed] == list(range(N))
    assert resumed == reference
