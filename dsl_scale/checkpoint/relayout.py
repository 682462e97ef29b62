"""Resume at any layout: a `latest` saved at another TP, PP, DP size or ZeRO stage than the run's is resharded
in-process before the engine loads it (`checkpoint.reshard=auto`, the default), so a requeued job that lands on
fewer nodes continues its loss curve instead of stopping with DeepSpeed's DP-size error.

The reshard is what `tools/convert_checkpoint.py RUN OUT --to deepspeed` does offline: rank 0 reads the tag
into whole tensors (zero_reader.py) and writes them, with the AdamW moments, LR schedule and EMA, as a
layout-free tag under `checkpoints/.resharded/`; every rank then restores its own slices from it (reshard.py),
and the copy is removed once every rank has loaded. DeepSpeed loads a checkpoint itself when only the DP size
changed at ZeRO-0 (nothing is partitioned over DP), so that resume stays DeepSpeed's own, bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dsl_scale.checkpoint import layout
from dsl_scale.checkpoint.consolidated import is_consolidated, write_consolidated
from dsl_scale.core.files import atomic_directory, atomic_write_text

POLICIES = ("auto", "never")
RESHARDED = ".resharded"  # under checkpoints/: not a `step_*` tag, so pruning never counts it


def saved_layout(tag_dir: Path) -> dict[str, int]:
    """{"tp", "pp", "dp", "zero_stage"} a training tag was saved at."""
    from dsl_scale.checkpoint.zero_reader import TrainingCheckpoint

    meta = json.loads((tag_dir / layout.META).read_text())
    stage = int(TrainingCheckpoint(tag_dir).config.get("parallel", {}).get("zero_stage", 0))
    return {"tp": int(meta["tp"]), "pp": int(meta["pp"]), "dp": int(meta["dp"]), "zero_stage": stage}


def needs_reshard(saved: dict[str, int], run: dict[str, int]) -> bool:
    if any(saved[k] != run[k] for k in ("tp", "pp", "zero_stage")):
        return True
    return saved["dp"] != run["dp"] and run["zero_stage"] > 0  # ZeRO partitions the optimizer over DP


def describe(layout_: dict[str, int]) -> str:
    return f"TP{layout_['tp']}·PP{layout_['pp']}·DP{layout_['dp']}·ZeRO-{layout_['zero_stage']}"


def prepare(root: Path, tag: str, run: dict[str, int], policy: str = "auto") -> tuple[str, str | None]:
    """Rank 0, at start-up: (the tag to resume from, a log line or None). A training tag saved at another layout
    is resharded into a layout-free tag (auto) or refused naming the offline command (never)."""
    if policy not in POLICIES:
        raise ValueError(f"checkpoint.reshard={policy!r} is not one of {list(POLICIES)}")
    if is_consolidated(root / tag):  # layout-free already: every layout resumes from it
        return tag, None
    saved = saved_layout(root / tag)
    if not needs_reshard(saved, run):
        return tag, None
    if policy == "never":
        run_dir = root.parent
        raise ValueError(
            f"{root / tag} was saved at {describe(saved)}, this run is {describe(run)}, and checkpoint.reshard=never: "
            f"convert it offline with `python tools/convert_checkpoint.py {run_dir} NEW_RUN_DIR --to deepspeed "
            f"--tp {run['tp']} --pp {run['pp']}` and resume from NEW_RUN_DIR, or set checkpoint.reshard=auto"
        )
    from dsl_scale.checkpoint.zero_reader import TrainingCheckpoint

    out = root / RESHARDED / tag
    if not is_consolidated(out):
        source = TrainingCheckpoint(root / tag)
        with atomic_directory(out, exist_ok=True) as tmp:
            write_consolidated(source, tmp, "fp32", optimizer=True)
            atomic_write_text(tmp / layout.META, json.dumps(
                {"step": source.step, "format": "layout_free", "tp": run["tp"], "pp": run["pp"]}))
    return (f"{RESHARDED}/{tag}",
            f"{root / tag} was saved at {describe(saved)}; resharded in-process for this run's {describe(run)} "
            "(checkpoint.reshard=auto)")


def cleanup(root: Path, tag: str) -> None:
    """Rank 0, once every rank has loaded `tag`: remove the in-process reshard's copy."""
    if tag.startswith(RESHARDED + "/"):
        shutil.rmtree(root / RESHARDED, ignore_errors=True)
