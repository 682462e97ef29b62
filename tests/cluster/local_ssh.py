"""An sshd on a loopback port with a throwaway key, and an ssh config that makes host aliases of 127.0.0.1:
enough for `deepspeed --hostfile` (pdsh over ssh) to treat one machine as several nodes. Nothing outside
its directory changes except /run/sshd (sshd's privilege-separation directory), created only when missing
and removed again by `stop`."""

from __future__ import annotations

import getpass
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dsl_scale.parallel.topology import free_port
from tests.cluster import apt

PACKAGES = ("openssh-server", "openssh-client", "pdsh")
PRIVSEP_DIR = Path("/run/sshd")


def ensure_installed() -> None:
    """apt-get install sshd, ssh and pdsh when missing; RuntimeError (with apt's words) when that fails."""
    apt.ensure_packages(("sshd", "ssh", "pdsh", "ssh-keygen"), PACKAGES)


class LoopbackSSH:
    def __init__(self, root: Path, aliases: tuple[str, ...] = ("node1", "node2")):
        self.root = Path(root).resolve()
        self.aliases = aliases
        self.port = free_port()
        self.client_config = self.root / "ssh_config"
        self.proc: subprocess.Popen | None = None
        self.created_privsep = False

    def _keygen(self, path: Path) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)

    def start(self, timeout: float = 20) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._keygen(self.root / "host_key")
        self._keygen(self.root / "client_key")
        (self.root / "authorized_keys").write_text((self.root / "client_key.pub").read_text())
        (self.root / "authorized_keys").chmod(0o600)
        (self.root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.root / 'host_key'}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPidFile {self.root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "StrictModes no\nUsePAM no\nPermitUserEnvironment no\nSubsystem sftp internal-sftp\n"
        )
        self.client_config.write_text("".join(
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {getpass.getuser()}\n"
            f"  IdentityFile {self.root / 'client_key'}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n" for alias in self.aliases))
        if not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755)
            self.created_privsep = True
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "w"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ssh(self.aliases[0], "true").returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"sshd on port {self.port} not reachable: {(self.root / 'sshd.log').read_text()}")

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.client_config), "-o", "BatchMode=yes", host, command],
                              capture_output=True, text=True, timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.created_privsep:
            shutil.rmtree(PRIVSEP_DIR, ignore_errors=True)
