"""Print a run's validation loss curve and whether it fell: python tools/summarize_run.py RUN_DIR
(or the console script: dsl-summarize-run RUN_DIR). Exits 1 when it did not fall."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def summarize(run_dir: str) -> int:
    evals = [json.loads(line) for line in (Path(run_dir) / "eval.jsonl").read_text().splitlines() if line]
    steps = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    if not evals:
        print(f"{run_dir}: no evaluations recorded")
        return 1
    print(f"validation NELBO per token ({run_dir}):")
    for record in evals:
        print(f"  step {record['step']:>6}  val_loss {record['val_loss']:.4f}  ppl bound {record['val_ppl_bound']:.1f}")
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
