"""The experiment's outputs: results.json (every figure and setting), results.md (tables) and a plot of
MAUVE (and gen-PPL) against the mean number of denoiser evaluations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dsl_scale.experiment.config import Experiment, experiment_dict
from dsl_scale.experiment.stages import Layout

RUNS = (("pretrain", "MDLM pretraining"), ("mdlm", "MDLM, continued"), ("dsl", "DSL fine-tune"),
        ("ar", "AR baseline (gen-PPL scorer)"))


def collect_rows(e: Experiment, layout: Layout) -> list[dict[str, Any]]:
    """One row per (method, T) from the evaluation results files; a missing file is an error."""
    rows = []
    for method in e.sample.methods:
        for steps in e.sample.steps:
            file = layout.results(method, steps)
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing: the evaluate stage for {method.label} T={steps} "
                                        "has not run")
            r = json.loads(file.read_text())
            rows.append({
                "method": method.label, "checkpoint": method.checkpoint, "sampler": method.sampler, "T": steps,
                "mean_nfe": r.get("mean_nfe"), "count": r.get("count"),
                "mauve": (r.get("mauve") or {}).get("mauve"), "gen_ppl": (r.get("gen_ppl") or {}).get("gen_ppl"),
                "entropy": (r.get("entropy") or {}).get("entropy"), "results_file": str(file),
            })
    return rows


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Steps, last validation loss and mean training throughput of one training run."""
    def lines(name: str) -> list[dict]:
        path = run_dir / name
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []

    evals, steps = lines("eval.jsonl"), lines("metrics.jsonl")
    rates = [s["tokens_per_s"] for s in steps if "tokens_per_s" in s]
    return {"run_dir": str(run_dir), "steps": steps[-1]["step"] if steps else 0,
            "val_loss": evals[-1]["val_loss"] if evals else None,
            "tokens_per_s": sum(rates) / len(rates) if rates else None}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(e: Experiment, rows: list[dict], runs: dict[str, dict], wall_s: float) -> str:
    t, s, d = e.train, e.sample, e.data
    grid = list(s.steps)
    lines = [
        f"# Reproduction `{e.name}`: does DSL fine-tuning make ReMDM sampling more step-efficient?",
        "",
        f"Data `{d.source}` (tokenizer `{d.tokenizer}`, L = {d.seq_len}; MAUVE references: held-out validation "
        f"blocks), model `{t.model}`, seed {e.seed}. MDLM pretraining {t.pretrain_steps} steps, then "
        f"{t.extra_steps} more steps for each arm (DSL fine-tune `{' '.join(t.dsl_overrides)}`; MDLM continued), "
        f"global batch {t.global_batch}; AR baseline {t.ar_steps} steps. {s.num_samples} samples per cell, "
        f"top-p {s.top_p}; MAUVE featurizer `{e.eval.featurizer}`; gen-PPL under our AR run. "
        f"Wall time {wall_s / 60:.1f} min.",
        *(["", e.note] if e.note else []),
        "",
        "## MAUVE (higher is better) by number of steps T",
        "",
        "| method | " + " | ".join(f"T={T}" for T in grid) + " |",
        "|---|" + "---|" * len(grid),
    ]
    for method in s.methods:
        cells = {r["T"]: r for r in rows if r["method"] == method.label}
        lines.append(f"| {method.label} | " + " | ".join(_fmt(cells[T]["mauve"]) for T in grid) + " |")
    lines += ["", *step_efficiency(e, rows), "", "## Every figure", "",
              "| method | T | mean NFE | MAUVE | gen-PPL | entropy | samples |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['T']} | {_fmt(r['mean_nfe'], 1)} | {_fmt(r['mauve'])} | "
                     f"{_fmt(r['gen_ppl'], 1)} | {_fmt(r['entropy'], 3)} | {r['count']} |")
    lines += ["", "## Training runs", "", "| run | steps | last validation loss | tokens/s |", "|---|---|---|---|"]
    for key, label in RUNS:
        run = runs.get(key, {})
        lines.append(f"| {label} | {run.get('steps', '–')} | {_fmt(run.get('val_loss'))} | "
                     f"{_fmt(run.get('tokens_per_s'), 0)} |")
    lines += ["", "Validation losses are each objective's own bound (MDLM NELBO, DSL cross-entropy, AR NLL) per "
              "token: compare them within a row over time, not across rows.", ""]
    return "\n".join(lines)


def step_efficiency(e: Experiment, rows: list[dict]) -> list[str]:
    """SPEC §5's claim measured: the fewest denoiser calls with which each method reaches the MAUVE of
    MDLM + ReMDM-loop at the largest T."""
    base = next((m for m in e.sample.methods if m.checkpoint == "mdlm" and m.sampler == "remdm_loop"), None)
    if base is None:
        return []
    top = max(e.sample.steps)
    target = next(r["mauve"] for r in rows if r["method"] == base.label and r["T"] == top)
    if target is None:
        return []
    lines = [f"Fewest mean NFE reaching {base.label}'s MAUVE at T={top} ({target:.3f}):", ""]
    for m in e.sample.methods:
        reached = [r["mean_nfe"] or r["T"] for r in rows if r["method"] == m.label and (r["mauve"] or 0) >= target]
        lines.append(f"- {m.label}: {f'{min(reached):.1f}' if reached else 'not reached'}")
    return lines


def write_report(e: Experiment, layout: Layout, stages: list[dict], wall_s: float, plot: bool = True) -> dict:
    """results.json, results.md and mauve_vs_nfe.png under the output directory; returns results.json's content."""
    rows = collect_rows(e, layout)
    runs = {key: run_summary(layout.run(key)) for key, _ in RUNS}
    results = {"experiment": experiment_dict(e), "tokenizer": e.data.tokenizer, "seed": e.seed, "rows": rows,
               "runs": runs, "stages": stages, "wall_time_s": wall_s}
    (layout.root / "results.json").write_text(json.dumps(results, indent=2))
    (layout.root / "results.md").write_text(markdown(e, rows, runs, wall_s))
    if plot:
        points = {m.label: sorted(({"nfe": r["mean_nfe"] or r["T"], "mauve": r["mauve"], "gen_ppl": r["gen_ppl"]}
                                   for r in rows if r["method"] == m.label), key=lambda p: p["nfe"])
                  for m in e.sample.methods}
        from dsl_scale.evaluation.plot import plot as plot_mauve_vs_nfe  # matplotlib: only when plotting

        plot_mauve_vs_nfe(points, str(layout.root / "mauve_vs_nfe.png"))
    return results
