"""A throwaway SLURM cluster on 127.0.0.1: munged, slurmctld and one slurmd per virtual node, all started by
hand (no systemd) with every file in one directory, and stopped by pid.

    python -m tests.cluster.local_slurm up DIR [--nodes 2]   prints `export SLURM_CONF=DIR/slurm.conf`
    python -m tests.cluster.local_slurm down DIR

Debian's packages are installed with apt-get when missing (root only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dsl_scale.parallel.topology import free_port
from tests.cluster import apt

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged")

CONF = """\
ClusterName=dsltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket,cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def missing_binaries() -> list[str]:
    return apt.missing(BINARIES)


def ensure_installed() -> None:
    """apt-get install the Debian packages when a binary is missing; RuntimeError (with apt's words) on failure."""
    apt.ensure_packages(BINARIES, PACKAGES)


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    """Virtual nodes n1..nN, all with NodeAddr=127.0.0.1 and their own slurmd port."""

    def __init__(self, root: Path, nodes: int = 2, cpus: int | None = None):
        self.root = Path(root).resolve()
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # --------------------------------------------------------------------------------------------
    def write_config(self) -> None:
        for sub in ("munge", "state", *(f"spool/{n}" for n in self.names)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lines = [f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={n} Port={free_port()} CPUs={self.cpus} "
                 f"RealMemory=1000 State=UNKNOWN" for n in self.names]
        self.conf.write_text(CONF.format(dir=self.root, ctld_port=free_port(), nodes="\n".join(lines)))
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        m = self.root / "munge"
        self._run([_sbin("munged"), "--force", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
                   f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        self._run([_sbin("slurmctld"), "-f", str(self.conf), "-i"])
        for name in self.names:
            self._run([_sbin("slurmd"), "-f", str(self.conf), "-N", name])
        self.wait_idle(timeout)

    def _run(self, cmd: list[str]) -> None:
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}\n{self.logs()}")

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True,
                                 text=True)
            states = out.stdout.strip()
            if out.returncode == 0 and len(states.splitlines()) == len(self.names) and all(
                    line.split()[1] in ("idle", "mix", "alloc") for line in states.splitlines()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"nodes not idle after {timeout} s: {states!r}\n{self.logs()}")

    def logs(self, tail: int = 1500) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("munge/*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def pids(self) -> list[int]:
        files = [self.root / "munge" / "munged.pid", self.root / "slurmctld.pid",
                 *sorted(self.root.glob("slurmd-*.pid"))]
        return [int(f.read_text().split()[0]) for f in files if f.exists() and f.read_text().strip()]

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the daemons this cluster started (by their pid files), then SIGKILL what remains."""
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
            if not any(_alive(p) for p in pids):
                return

    # --------------------------------------------------------------------------------------------
    def slurm(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), env={**self.env, **kwargs.pop("env", {})}, capture_output=True,
                                text=True, timeout=60, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr}")
        return result

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key → value (JobState, RestartCnt, ExitCode, ...)."""
        out = self.slurm("scontrol", "-o", "show", "job", job_id).stdout
        pairs = (token.split("=", 1) for token in out.split() if "=" in token)
        return dict(pairs)

    def wait_job(self, job_id: str, timeout: float, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                               "NODE_FAIL", "OUT_OF_MEMORY")) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout} s: {info}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("dir")
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    cluster = LocalSlurm(Path(args.dir), args.nodes)
    if args.action == "up":
        ensure_installed()
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
