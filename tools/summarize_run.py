"""Print a run's validation loss curve and whether it fell: python tools/summarize_run.py RUN_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: str) -> int:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
