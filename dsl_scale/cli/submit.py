"""Submit a pretrain / finetune / sample job to SLURM from a `cluster/` config (configs/cluster/*.yaml).

    python launchers/submit.py JOB [cluster=NAME] [cluster.KEY=VALUE ...] [--dry-run] [JOB OVERRIDES ...]
    dsl-submit JOB ...                              (the console script: the same command)

    python launchers/submit.py pretrain cluster.nodes=4 cluster.partition=gpu cluster.account=proj \
        model=small data.path=data/owt-L1024 run_dir=runs/small
    python launchers/submit.py finetune cluster=deepspeed init_from=runs/small data.path=data/owt-L1024 \
        run_dir=runs/dsl --dry-run
    python launchers/submit.py pretrain cluster=gpu_4node preset=gpu_small_4node data.path=data/owt-L1024 \
        run_dir=runs/small

The GPU presets (configs/preset/gpu_*) and the dsl_from_mdlm_owt_* recipes prepare no data (`data.source` empty), so
a training job needs `data.path=` to prepared shards (tools/prepare_data.py); without it the ranks stop at
start-up naming the key.

A training job's config is composed and validated at the cluster's world size (nodes × ranks per node) before
anything is submitted: a batch that does not divide by micro-batch × DP, a layout that does not fit, or TP
groups that would span nodes are errors here rather than in a queued job.

Arguments starting with `cluster` configure the job; the others are Hydra overrides for the entry point
(launchers/JOB.py). The job script is launchers/slurm/JOB.sbatch; the cluster settings become sbatch options
(which override its #SBATCH defaults) and DSL_* variables (read by launchers/slurm/job.sh). Training jobs
get a fixed run directory (`runs/JOB-<time>` unless run_dir= is given) so that a requeued job resumes
there, and their log is RUN_DIR/slurm-<job id>.out. `--dry-run` prints the sbatch command.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dsl_scale.launch import CONFIG_DIR

REPO = Path(CONFIG_DIR).parent  # the checkout (an editable install): configs/, launchers/slurm/, runs/
JOBS = ("pretrain", "finetune", "sample")
TRAINING = ("pretrain", "finetune")
LAUNCHERS = ("torchrun", "deepspeed")


@dataclass
class ClusterConfig:
    nodes: int = 1
    gpus_per_node: int = 8
    ranks_per_node: int | None = None
    cpus_per_task: int | None = None
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    launcher: str = "torchrun"
    exclusive: bool = True  # whole nodes (--exclusive); false: --oversubscribe, share nodes with other jobs
    signal_seconds: int = 120
    master_port: int | None = None
    python: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    sbatch_args: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> int:
        return self.ranks_per_node or self.gpus_per_node or 1


def load_cluster(overrides: list[str]) -> ClusterConfig:
    """configs/cluster/<NAME>.yaml (`cluster=NAME`, default `default`), then `cluster.KEY=VALUE` overrides
    (YAML values: cluster.env.NCCL_DEBUG=WARN, cluster.sbatch_args=[--exclusive]); unknown keys fail."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    names = [o.split("=", 1)[1] for o in overrides if o.startswith("cluster=")]
    dotlist = [o for o in overrides if not o.startswith("cluster=")]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        composed = compose(overrides=[f"+cluster={names[-1] if names else 'default'}"])
    merged = OmegaConf.merge(OmegaConf.structured(ClusterConfig), composed.cluster,
                             OmegaConf.from_dotlist(dotlist).get("cluster", {}))
    cfg: ClusterConfig = OmegaConf.to_object(merged)
    check(cfg)
    return cfg


def check(cfg: ClusterConfig) -> None:
    if cfg.launcher not in LAUNCHERS:
        raise ValueError(f"cluster.launcher={cfg.launcher!r}: expected one of {LAUNCHERS}")
    if cfg.nodes < 1 or cfg.ranks < 1 or cfg.gpus_per_node < 0:
        raise ValueError(f"cluster.nodes={cfg.nodes}, ranks per node {cfg.ranks} and "
                         f"cluster.gpus_per_node={cfg.gpus_per_node} must be positive")
    if cfg.gpus_per_node > 0 and cfg.ranks > cfg.gpus_per_node:
        raise ValueError(f"cluster.ranks_per_node={cfg.ranks} > cluster.gpus_per_node={cfg.gpus_per_node}: ranks "
                         "would share a GPU")
    for key, value in cfg.env.items():
        if "," in str(value) or "=" in key:
            raise ValueError(f"cluster.env.{key}={value!r}: sbatch --export cannot carry ',' in values")


def check_job_config(job: str, cfg: ClusterConfig, job_overrides: list[str], estimate: bool = False) -> None:
    """A training job's config, composed from its overrides and validated at the cluster's world size (the same
    checks the ranks run at start, dsl_scale/config.py `validate`); tensor-parallel groups must not span nodes."""
    if job not in TRAINING:
        return
    from hydra import compose, initialize_config_dir

    from dsl_scale.config import register_configs, to_config, validate

    register_configs()
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        train_cfg = to_config(compose("config" if job == "pretrain" else job, overrides=list(job_overrides)))
    world = cfg.nodes * cfg.ranks
    validate(train_cfg, world)
    if cfg.nodes > 1 and cfg.ranks % train_cfg.parallel.tp:
        raise ValueError(f"parallel.tp={train_cfg.parallel.tp} does not divide the {cfg.ranks} ranks per node "
                         f"(cluster.gpus_per_node / cluster.ranks_per_node): tensor-parallel groups would span nodes")
    if estimate:  # what each rank will hold (dsl-estimate-memory), before anything is queued
        from dsl_scale.cli import estimate_memory

        try:
            print(estimate_memory.report(train_cfg, world, estimate_memory.estimate(train_cfg, world)))
        except Exception as err:  # an estimate is advice: its failure does not stop a valid job
            print(f"memory estimate unavailable: {str(err).splitlines()[0]}", file=sys.stderr)


def sbatch_command(job: str, cfg: ClusterConfig, job_overrides: list[str], stamp: str) -> tuple[list[str], Path]:
    """The sbatch command line, and the directory that will hold the job's log."""
    if job not in JOBS:
        raise ValueError(f"job {job!r}: expected one of {JOBS}")
    overrides = list(job_overrides)
    if job in TRAINING:
        run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
        if not run_dirs:
            run_dirs = [f"runs/{job}-{stamp}"]
            overrides.append(f"run_dir={run_dirs[0]}")
        log_dir = REPO / run_dirs[-1]
    else:
        log_dir = REPO / "runs" / "slurm-logs"
    # torchrun: one task per node that starts all of its ranks; deepspeed's slurm backend: a task per rank.
    tasks_per_node = cfg.ranks if cfg.launcher == "deepspeed" else 1
    cmd = ["sbatch", "--parsable", f"--job-name=dsl-{job}", f"--nodes={cfg.nodes}",
           f"--ntasks-per-node={tasks_per_node}", f"--time={cfg.time}", f"--output={log_dir}/slurm-%j.out"]
    for option, value in (("partition", cfg.partition), ("account", cfg.account), ("qos", cfg.qos),
                          ("cpus-per-task", cfg.cpus_per_task)):
        if value is not None:
            cmd.append(f"--{option}={value}")
    if cfg.gpus_per_node > 0:
        cmd.append(f"--gpus-per-node={cfg.gpus_per_node}")
    # The templates ask for --exclusive; sbatch has no --no-exclusive, and --oversubscribe overrides it (the
    # partition's OverSubscribe setting still decides whether CPUs are shared).
    cmd.append("--exclusive" if cfg.exclusive else "--oversubscribe")
    if job in TRAINING:
        cmd.append(f"--signal=USR1@{cfg.signal_seconds}")
    env = {"DSL_SCALE_ROOT": str(REPO), "DSL_LAUNCHER": cfg.launcher, "DSL_RANKS_PER_NODE": str(cfg.ranks)}
    if cfg.master_port is not None:
        env["DSL_MASTER_PORT"] = str(cfg.master_port)
    if cfg.python is not None:
        env["DSL_SCALE_PYTHON"] = cfg.python
    env.update({k: str(v) for k, v in cfg.env.items()})
    cmd.append("--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())]))
    cmd += [*cfg.sbatch_args, str(REPO / "launchers" / "slurm" / f"{job}.sbatch"), *overrides]
    return cmd, log_dir


def submit(argv: list[str] | None = None) -> str:
    """Submit (or with --dry-run print) the job; returns the SLURM job id ("" for a dry run)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=JOBS)
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch command instead of running it")
    parser.add_argument("--no-estimate", action="store_true", help="skip the per-rank memory estimate")
    args, rest = parser.parse_known_args(argv)
    job_overrides = [a for a in rest if not a.startswith("cluster")]
    try:
        cfg = load_cluster([a for a in rest if a.startswith("cluster")])
        check_job_config(args.job, cfg, job_overrides, estimate=not args.no_estimate)
    except Exception as err:  # hydra / omegaconf / our checks: one line naming the key is enough
        parser.error(str(err).splitlines()[0])
    cmd, log_dir = sbatch_command(args.job, cfg, job_overrides, time.strftime("%Y%m%d-%H%M%S"))
    if args.dry_run:
        print(shlex.join(cmd))
        return ""
    log_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
    job_id = result.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}; log {log_dir}/slurm-{job_id}.out")
    return job_id


def main(argv: list[str] | None = None) -> int:
    submit(argv)
    return 0
