"""Experiment trackers beside TensorBoard: Weights & Biases (`logging.wandb.*`), and the profiler switch
(`train.profile_steps=[a, b]`).

W&B runs on rank 0 only. Its run id is drawn once per run directory and kept beside the checkpoints, in
`run_dir/wandb.json`, so a job that is killed, requeued or resumed reopens the same W&B run (`resume="allow"`)
instead of starting a new one. Records carry the training step as `trainer/step`, the x-axis
of every chart, so steps a resumed run repeats after its checkpoint land on the same x.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import torch

from dsl_scale.core.files import atomic_write_text

ID_FILE = "wandb.json"
STEP_KEY = "trainer/step"


class WandbTracker:
    """A no-op unless `cfg.enabled` and this is the logging rank."""

    def __init__(self, cfg, run_dir: Path, config: dict[str, Any] | None, enabled: bool):
        self.run = None
        self.run_id: str | None = None
        if not (enabled and cfg is not None and cfg.enabled):
            return
        try:
            import wandb
        except ImportError as err:
            raise ImportError("logging.wandb.enabled=true needs the wandb package: pip install -e '.[tracking]' "
                              "(or pip install wandb)") from err
        id_file = run_dir / ID_FILE
        saved = json.loads(id_file.read_text()) if id_file.exists() else {}
        self.run_id = saved.get("id") or secrets.token_hex(4)  # W&B ids: lower-case letters and digits
        if not saved:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(id_file, json.dumps({"id": self.run_id, "project": cfg.project}) + "\n")
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, name=cfg.name or run_dir.resolve().name,
            group=cfg.group or None, tags=list(cfg.tags) or None, id=self.run_id, resume="allow",
            dir=str(run_dir), config=config, mode=cfg.mode or os.environ.get("WANDB_MODE") or "online",
        )
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def log(self, record: dict[str, Any], prefix: str) -> None:
        if self.run is None:
            return
        values = {f"{prefix}/{k}": v for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self.run.log({STEP_KEY: record["step"], **values})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class StepProfiler:
    """`train.profile_steps=[a, b]`: torch.profiler over optimizer steps a..b (inclusive) of every rank, its
    trace written at b to run_dir/profile/ as `rank<R>.<…>.pt.trace.json` (Chrome trace format; TensorBoard's
    profiler plugin reads the folder). [] is off."""

    def __init__(self, steps, run_dir: Path, rank: int):
        steps = list(steps or [])
        if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
            raise ValueError(f"train.profile_steps={steps}: want [] or [first, last] with 1 <= first <= last")
        self.window = tuple(steps) if steps else None
        self.directory = run_dir / "profile"
        self.rank = rank
        self.profiler: torch.profiler.profile | None = None

    def before_step(self, step: int) -> None:
        if self.window is None or step != self.window[0]:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        handler = torch.profiler.tensorboard_trace_handler(str(self.directory), worker_name=f"rank{self.rank}")
        self.profiler = torch.profiler.profile(activities=activities, on_trace_ready=handler, record_shapes=True)
        self.profiler.start()

    def after_step(self, step: int) -> None:
        if self.profiler is not None and step >= self.window[1]:
            self.close()

    def close(self) -> None:
        """Stop and write the trace (also when the run ends inside the window)."""
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
