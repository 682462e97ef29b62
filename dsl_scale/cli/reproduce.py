"""Reproduce the paper's comparison at CPU scale (docs/method.md §5): MDLM vs DSL fine-tuning under ReMDM sampling.

    python tools/reproduce.py                       # configs/experiment/full.yaml (text), into runs/reproduce
    python tools/reproduce.py --config synthetic    # configs/experiment/synthetic.yaml: the synthetic-hmm testbed
    python tools/reproduce.py --quick               # configs/experiment/quick.yaml: a few minutes (CI)
    python tools/reproduce.py --config my.yaml --out runs/mine sample.num_samples=400   # key=value overrides
    dsl-reproduce [--quick] ...                     # the console script: the same command

Stages: prepare data → pretrain MDLM → from it, fine-tune DSL and continue MDLM for the same steps →
train the AR model (gen-PPL scorer, in-domain MAUVE / Fréchet features) → for every T, method and sampling
seed, sample and evaluate (with sanity rows and bootstrap intervals) → the paper's analyses of each arm
(calibration, self-correction) → results.md, results.json and quality_vs_nfe.png in the output directory.
Every finished stage is recorded under OUT/stages/ and skipped when the command is run again, so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf.errors import ConfigKeyError, ValidationError

from dsl_scale.experiment.config import load_experiment
from dsl_scale.experiment.report import write_report
from dsl_scale.experiment.stages import Layout, build_stages, run_stages, stage_span


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="configs/experiment/NAME or a YAML file (default: full)")
    parser.add_argument("--quick", action="store_true", help="the reduced CI experiment (configs/experiment/quick)")
    parser.add_argument("--out", default=None, help="output directory (default: the config's out_dir)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("overrides", nargs="*", help="experiment settings as key=value (e.g. sample.steps=[8,16])")
    args = parser.parse_args(argv)
    if args.quick and args.config:
        parser.error("--quick is configs/experiment/quick.yaml; give either --quick or --config")
    try:
        experiment = load_experiment(args.config or ("quick" if args.quick else "full"), args.overrides)
    except (ValueError, FileNotFoundError, ConfigKeyError, ValidationError) as err:
        print(f"[reproduce] bad experiment config: {err}", file=sys.stderr)
        return 2
    layout = Layout(Path(args.out or experiment.out_dir).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    stages = build_stages(experiment, layout)
    print(f"[reproduce] experiment {experiment.name!r} into {layout.root}: {len(stages)} stages, "
          f"data {experiment.data.source} (tokenizer {experiment.data.tokenizer}), T grid "
          f"{list(experiment.sample.steps)}, sampling seeds {list(experiment.sample.seeds)}", flush=True)
    started = time.time()
    try:
        records = run_stages(stages, layout, budget_s=experiment.stop_after_minutes * 60,
                             workers=experiment.workers, in_process=experiment.in_process)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"[reproduce] stopped: {err}", file=sys.stderr)
        return 1
    summed = sum(r["seconds"] for r in records)  # every stage's own time, also when earlier runs did some
    wall = stage_span(records) or summed
    write_report(experiment, layout, records, wall, plot=not args.no_plot)
    print(f"[reproduce] wrote {layout.root / 'results.md'}, results.json"
          f"{'' if args.no_plot else ', quality_vs_nfe.png'} ({time.time() - started:.0f} s this time, "
          f"{wall / 60:.1f} min from the first stage's start to the last one's end, stages summed "
          f"{summed / 60:.1f} min)\n", flush=True)
    print((layout.root / "results.md").read_text())
    return 0
