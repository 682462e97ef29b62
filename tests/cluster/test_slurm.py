"""The sbatch templates on a real SLURM cluster of two virtual nodes (127.0.0.1): a 2-node × 1-rank pretraining
job submitted with launchers/submit.py, the same job interrupted by the warning signal (checkpoint, requeue,
resume), and DeepSpeed's own slurm launcher."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsl_scale.parallel.topology import free_port
from tests.launching import REPO, read_jsonl

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.distributed]

STEPS = 12
TRAIN = ["model=micro", f"train.steps={STEPS}", "train.global_batch=8", "train.micro_batch=4",
         "train.eval_every=6", "train.eval_examples=8", "train.save_every=6", "train.log_every=1"]
STEP_LINE = re.compile(r"^\[dsl_scale\] \S+ \S+ step (\d+)/\d+ loss ", re.M)  # after the date and time


def submit(cluster, run_dir: Path, data: Path, *extra: str, steps: int = STEPS) -> str:
    cmd = [sys.executable, str(REPO / "launchers" / "submit.py"), "pretrain", "cluster=local",
           f"cluster.master_port={free_port()}", *extra, *TRAIN, f"train.steps={steps}", f"data.path={data}",
           f"run_dir={run_dir}"]
    result = subprocess.run(cmd, env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return re.search(r"submitted job (\d+)", result.stdout).group(1)


def finish(cluster, job_id: str, run_dir: Path, timeout: float = 400) -> tuple[dict, str]:
    info = cluster.wait_job(job_id, timeout)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    if info["JobState"] != "COMPLETED":
        log += f"\n--- job {job_id} ended {info['JobState']}; the cluster's logs:\n{cluster.logs()}"
    return info, log


def completed(job: tuple[Path, dict, str]) -> tuple[Path, dict, str]:
    run_dir, info, log = job
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-5000:]}"
    return job


def signal_after_two_steps(cluster, job_id: str, run_dir: Path, timeout: float = 300) -> None:
    """What `#SBATCH --signal=USR1@120` does before the time limit: SIGUSR1 to every process of the job's steps,
    sent here once a couple of steps are done and most are still to come."""
    deadline = time.monotonic() + timeout
    while len(read_jsonl(run_dir / "metrics.jsonl")) < 2:
        log = run_dir / f"slurm-{job_id}.out"
        assert time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else cluster.logs()
        assert cluster.job_info(job_id)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.3)
    cluster.slurm("scancel", "--signal=USR1", job_id)


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tiny_shards, tmp_path_factory) -> dict[str, tuple[Path, dict, str]]:
    """Three jobs at once (the nodes have room for all): a plain run, one interrupted by the warning signal,
    and a short one under DeepSpeed's slurm launcher. name → (run_dir, final `scontrol show job`, log)."""
    runs = {name: tmp_path_factory.mktemp(f"slurm_{name}") for name in ("plain", "signalled", "deepspeed")}
    ids = {"plain": submit(slurm_cluster, runs["plain"], tiny_shards),
           "signalled": submit(slurm_cluster, runs["signalled"], tiny_shards),
           "deepspeed": submit(slurm_cluster, runs["deepspeed"], tiny_shards, "cluster.launcher=deepspeed", steps=2)}
    signal_after_two_steps(slurm_cluster, ids["signalled"], runs["signalled"])
    return {name: (runs[name], *finish(slurm_cluster, ids[name], runs[name])) for name in ids}


def test_pretrain_two_nodes(jobs):
    run_dir, info, log = completed(jobs["plain"])
    assert "on n1 n2: torchrun, 2 node(s) × 1 rank(s)" in log
    assert "world 2 (tp 1 × pp 1 × dp 2)" in log
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    first_val = read_jsonl(run_dir / "eval.jsonl")[0]
    assert first_val["step"] == 0
    assert records[-1]["val_loss"] < first_val["val_loss"] - 0.2, (first_val, records[-1])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert (run_dir / "checkpoints" / f"step_{STEPS:08d}" / "meta.json").exists()
    assert info["Restarts"] == "0"


def test_warning_signal_checkpoints_requeues_and_resumes(jobs):
    run_dir, info, log = completed(jobs["signalled"])
    assert info["Restarts"] == "1", info
    assert "requeueing job" in log and "(restart 1)" in log
    saved = int(re.search(r"SIGUSR1: checkpoint of step (\d+) saved", log).group(1))
    assert 2 <= saved < STEPS
    assert re.search(rf"resumed from \S+/step_{saved:08d} at step {saved}\b", log)
    # every step ran exactly once over both runs (the log is appended across the requeue)
    assert sorted(int(s) for s in STEP_LINE.findall(log)) == list(range(1, STEPS + 1))
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # resuming replays exactly what the uninterrupted job computed
    reference = read_jsonl(jobs["plain"][0] / "metrics.jsonl")
    for got, want in zip(records, reference):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), (got, want)
    assert not (run_dir / "REQUEUE").exists()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"


def test_deepspeed_slurm_launcher(jobs):
    run_dir, _, log = completed(jobs["deepspeed"])
    assert "deepspeed, 2 node(s) × 1 rank(s)" in log
    assert re.search(r"cmd = srun -n 2 ", log)
    assert log.count("world 2 (tp 1 × pp 1 × dp 2)") == 1  # one world of two ranks, not two worlds of one
    records = read_jsonl(run_dir / "metrics.jsonl")
    reference = read_jsonl(jobs["plain"][0] / "metrics.jsonl")[:2]
    assert [r["step"] for r in records] == [1, 2]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in reference], rel=1e-5)
