"""Print a run's validation loss curve and whether it fell: python tools/summarize_run.py RUN_DIR
(or the console script: dsl-summarize-run RUN_DIR). Exits 1 when it did not fall."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# What the trainer's validation loss is, per objective (diffusion/objectives.py), and the name of exp(loss).
LOSS_NAMES = {
    "mdlm": ("validation NELBO per token", "ppl bound"),
    "dsl": ("validation DSL loss per token (unweighted cross-entropy on noised inputs, not a likelihood bound)",
            "exp(loss)"),
    "ar": ("validation next-token NLL per token", "ppl"),
}


def objective_of(run_dir: str) -> str:
    """The run's objective, from its config.yaml (mdlm when it cannot be read)."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "mdlm"
    return str((config.get("objective") or {}).get("name", "mdlm"))


def summarize(run_dir: str) -> int:
    evals = [json.loads(line) for line in (Path(run_dir) / "eval.jsonl").read_text().splitlines() if line]
    steps = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    if not evals:
        print(f"{run_dir}: no evaluations recorded")
        return 1
    objective = objective_of(run_dir)
    title, ppl = LOSS_NAMES.get(objective, (f"validation loss ({objective})", "exp(loss)"))
    print(f"{title} ({run_dir}, objective {objective}):")
    for record in evals:
        print(f"  step {record['step']:>6}  val_loss {record['val_loss']:.4f}  {ppl} {record['val_ppl_bound']:.1f}")
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    rate = sum(r["tokens_per_s"] for r in steps) / max(len(steps), 1)
    verdict = "fell" if last < first else "did NOT fall"
    print(f"validation loss {verdict}: {first:.4f} → {last:.4f} over {len(steps)} steps "
          f"({rate:.0f} tokens/s on average)")
    return 0 if last < first else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="a training run's directory (eval.jsonl, metrics.jsonl)")
    return summarize(parser.parse_args(argv).run_dir)
