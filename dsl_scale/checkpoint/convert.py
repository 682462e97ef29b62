"""Checkpoint conversion between our training layout, the consolidated layout-free format, a resumable
run at a new layout, and the Hugging Face MDLM format (tools/convert_checkpoint.py is the command line).

Every conversion writes into a temporary directory beside the destination and renames it at the end.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from dsl_scale.checkpoint import hf_mdlm, layout
from dsl_scale.checkpoint.consolidated import write_consolidated
from dsl_scale.checkpoint.source import open_checkpoint
from dsl_scale.config import check_parallel_layout
from dsl_scale.core.files import atomic_directory, atomic_write_text

TARGETS = ("consolidated", "deepspeed", "hf-mdlm")


def check_layout(config: dict, tp: int, pp: int, vocab_size: int) -> None:
    """--tp/--pp (the new run's parallel.tp/pp) fit the saved model (dsl_scale.config.check_parallel_layout)."""
    check_parallel_layout(config["model"], vocab_size, tp, pp)


def convert(src: str | Path, dst: str | Path, to: str, tp: int | None = None, pp: int | None = None,
            ema: bool = False, dtype: str = "fp32", optimizer: bool = True, seq_len: int = 1024) -> dict:
    """Returns a summary: {"to", "dst", "step", "written", "warnings"}."""
    if to not in TARGETS:
        raise ValueError(f"--to {to!r} must be one of {', '.join(TARGETS)}")
    opened = open_checkpoint(src, seq_len)
    if opened.kind == "safetensors":
        raise ValueError(f"{src} is a bare {opened.path.name} without a run config: convert its run directory")
    source = opened.reader
    warnings = []
    if optimizer and not source.has_optimizer and to != "hf-mdlm":
        warnings.append(f"{src} holds no optimizer state: a resumed run restarts AdamW's moments from zero")
    if to == "deepspeed" and not optimizer and source.has_optimizer:
        warnings.append("--no-optimizer: the optimizer state is dropped; a resumed run restarts AdamW's moments "
                        "from zero, so its loss curve will not continue exactly")
    dst = Path(dst)
    with atomic_directory(dst) as tmp:
        if to == "consolidated":
            written = write_consolidated(source, tmp, dtype, optimizer)
        elif to == "deepspeed":
            written = _write_resumable(source, tmp, tp or 1, pp or 1, dtype, optimizer)
        else:
            weights = source.full("model")
            if ema:
                if "ema" not in source.available():
                    raise FileNotFoundError(f"--ema, but {src} holds no EMA weights")
                weights.update(source.full("ema"))
            hf_mdlm.write_hf(weights, source.config, tmp, dtype, step=source.step, source=str(src))
            written = ["ema" if ema else "model"]
    return {"to": to, "dst": str(dst), "step": source.step, "written": written, "warnings": warnings}


def _write_resumable(source, out: Path, tp: int, pp: int, dtype: str, optimizer: bool) -> list[str]:
    """A run directory whose `checkpoints/latest` names a layout-free tag: `pretrain.py run_dir=OUT
    parallel.tp=… parallel.pp=…` resumes from it at that (or any valid) layout."""
    config = copy.deepcopy(source.config)
    vocab = source.full("model")["vocab_embed.weight"].shape[0]
    check_layout(config, tp, pp, vocab)
    config.setdefault("parallel", {}).update(tp=tp, pp=pp)
    tag = layout.tag_for(source.step)
    tag_dir = out / "checkpoints" / tag
    tag_dir.mkdir(parents=True)
    written = write_consolidated(source, tag_dir, dtype, optimizer, config=config)
    atomic_write_text(tag_dir / layout.META,
                      json.dumps({"step": source.step, "format": "layout_free", "tp": tp, "pp": pp}))
    atomic_write_text(out / "checkpoints" / layout.LATEST, tag)
    return written
