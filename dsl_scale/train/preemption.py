"""Preemption and time limits: a warning signal asks the run to checkpoint and stop, the job requeues itself,
and the next start resumes from `latest`.

SLURM sends the signal some time before the limit (`#SBATCH --signal=USR1@90`) or on request
(`scancel --signal=USR1 JOB`). The handler only sets a flag; after each optimizer step the trainer takes the
maximum of the flags over all ranks (signals reach nodes at different moments), so every rank stops after the
same step. Rank 0 then writes `run_dir/REQUEUE` and every rank exits with REQUEUE_EXIT_CODE; the sbatch
templates turn either into `scontrol requeue $SLURM_JOB_ID`. On resume, rank 0 reads `latest` and the other
ranks take its answer, so a pointer replaced mid-start (or a stale network-filesystem view) cannot split them.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from dsl_scale.core.device import collective_device

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
REQUEUE_MARKER = "REQUEUE"
STOP_SIGNALS = (signal.SIGUSR1,)


class StopSignal:
    """Remembers that a stop signal arrived; `agreed()` is the collective decision to stop."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.received: int | None = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            for sig in signals:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "none"

    def agreed(self) -> bool:
        """True on every rank when any rank has received a stop signal (a collective: all ranks call it)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=collective_device())
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def mark_for_requeue(run_dir: Path, step: int, signal_name: str) -> None:
    """Rank 0 leaves a note for the job script: the checkpoint at `step` is saved, please requeue."""
    (run_dir / REQUEUE_MARKER).write_text(json.dumps({"step": step, "signal": signal_name}) + "\n")
