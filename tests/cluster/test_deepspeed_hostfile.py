"""`deepspeed --hostfile` across two "nodes": host aliases node1 and node2 of 127.0.0.1 reached over ssh (pdsh),
one rank on each, exactly as on a cluster without SLURM."""

from __future__ import annotations

import math
import os
import subprocess

import pytest

from dsl_scale.parallel.topology import free_port
from tests.launching import BIN, REPO, read_jsonl

pytestmark = [pytest.mark.multinode, pytest.mark.distributed]


def test_deepspeed_hostfile_two_hosts_over_ssh(loopback_ssh, tiny_shards, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=1\nnode2 slots=1\n")
    # The remote shells start from a clean environment: DeepSpeed exports what this file lists to every node.
    env_file = tmp_path / "deepspeed_env"
    env_file.write_text("DS_ACCELERATOR=cpu\nOMP_NUM_THREADS=1\nPYTHONWARNINGS=ignore\n")
    run_dir = tmp_path / "run"
    cmd = [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--launcher", "pdsh", "--no_ssh_check",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(REPO / "launchers" / "pretrain.py"), "model=micro", f"data.path={tiny_shards}", "train.steps=2",
           "train.global_batch=8", "train.micro_batch=4", "train.eval_examples=8", "train.log_every=1",
           f"run_dir={run_dir}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "DS_ENV_FILE": str(env_file),
           # the host aliases live in the fixture's ssh config, not in ~/.ssh/config
           "PDSH_SSH_ARGS_APPEND": f"-F {loopback_ssh.client_config}"}
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "{'node1': [0], 'node2': [0]}" in out  # the world DeepSpeed built from the hostfile
    assert "node1: [dsl_scale] world 2 (tp 1 × pp 1 × dp 2)" in out  # rank 0 on node1 sees both ranks
    assert "node2: " in out and out.count("[dsl_scale] world ") == 1
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"
