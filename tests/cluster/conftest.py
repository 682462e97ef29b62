"""Cluster fixtures: a two-node SLURM cluster and an sshd with two host aliases, both on 127.0.0.1.

They install Debian's packages when missing and skip (saying why) only where the host forbids it: not root,
no apt-get, or the package archive unreachable. Anything else that goes wrong is a failure."""

from __future__ import annotations

import os

import pytest

from tests.cluster import local_slurm, local_ssh


def _install_or_skip(ensure_installed, what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} runs its daemons as root (and installs packages with apt-get); this is not root")
    try:
        ensure_installed()
    except RuntimeError as err:  # raised only when packages are missing and apt-get cannot install them
        pytest.skip(f"{what}: cannot install the packages it needs: {err}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    _install_or_skip(local_slurm.ensure_installed, "the local SLURM cluster")
    # 4 CPUs per virtual node: room for three 1-CPU-per-node jobs at once
    cluster = local_slurm.LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=2, cpus=4)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def loopback_ssh(tmp_path_factory: pytest.TempPathFactory):
    _install_or_skip(local_ssh.ensure_installed, "the loopback sshd")
    server = local_ssh.LoopbackSSH(tmp_path_factory.mktemp("ssh"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
