"""Run metrics: `metrics.jsonl` (one object per optimizer step), `eval.jsonl`, and TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """Writes on the rank that owns it (rank 0); a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self.eval_path = run_dir / "eval.jsonl"
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps a resumed run is about to repeat (they were never checkpointed)."""
        if not self.enabled:
            return
        for path in (self.metrics_path, self.eval_path):
            if path.exists():
                kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
                path.write_text("".join(ln + "\n" for ln in kept))

    def _append(self, path: Path, record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_step(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(self.metrics_path, record)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"train/{key}", value, record["step"])

    def log_eval(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(self.eval_path, record)
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(f"eval/{key}", value, record["step"])
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
