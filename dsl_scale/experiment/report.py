"""The experiment's outputs: results.json (every figure and setting), results.md (tables) and a plot of
every quality figure with its interval against the mean number of denoiser evaluations (quality_vs_nfe.png).

Each metric's table (MAUVE, Fréchet distance, exact NLL under a synthetic source, gen-PPL) starts with
its sanity rows, held-out real text and shuffled real text (evaluation/sanity.py); when any cell's sanity
check failed the table says "sanity failed" instead of its figures. A cell's sampling seeds
(`<cell>_seed<k>.json`, one per `sample.seeds`) are averaged, with the envelope of their 95 % intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dsl_scale.experiment.config import Experiment, ar_run, expanded_methods, experiment_dict, quality_metric
from dsl_scale.experiment.stages import Layout, arm_runs

# (row key, path in a results file, its figure, sanity check name or None, table title)
METRICS = (
    ("mauve", ("mauve",), "mauve", "mauve", "MAUVE (higher is better)"),
    ("frechet", ("frechet",), "frechet", "frechet", "Fréchet distance on the MAUVE features (lower is better)"),
    ("eps_nll", ("eps_nll",), "eps_nll", "eps_nll",
     "ε-smoothed exact NLL per symbol, every sample scored (lower is better)"),
    ("hmm_nll", ("hmm_nll",), "nll_per_token", "hmm_nll",
     "Exact NLL per symbol under the synthetic source, valid samples only (lower is better)"),
    ("tv_2", ("hmm_tv", "tv_2"), "tv", "hmm_tv",
     "Bigram TV distance to the source's exact marginal (lower is better; held-out real = the finite-sample floor)"),
    ("tv_3", ("hmm_tv", "tv_3"), "tv", "hmm_tv",
     "Trigram TV distance to the source's exact marginal (lower is better)"),
    ("gen_ppl", ("gen_ppl",), "gen_ppl", "gen_ppl", "gen-PPL under the AR scorer (lower is better)"),
    ("gen_ppl_2", ("gen_ppl_2",), "gen_ppl", "gen_ppl_2", "gen-PPL under the second AR scorer (lower is better)"),
    ("kn_ppl", ("kn_ppl",), "gen_ppl", "kn_ppl", "Perplexity under the Kneser–Ney n-gram scorer (lower is better)"),
    *((f"distinct_{n}", ("entropy",), f"distinct_{n}", None,
       f"distinct-{n} (held-out real text is the reference: far below it is mode seeking)") for n in range(1, 5)),
)
SANITY_LABELS = (("real", "held-out real text"), ("shuffled", "shuffled real text"))


def _entry(result: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        result = (result or {}).get(key) or {}
    return result


def _figure(result: dict, path: tuple[str, ...], field: str) -> tuple[float | None, list[float] | None]:
    entry = _entry(result, path)
    ci = entry.get("ci95")
    return entry.get(field), ci.get(field) if isinstance(ci, dict) else ci


def _combine(values: list[tuple[float | None, list[float] | None]]) -> tuple[float | None, list[float] | None]:
    """Mean over seeds; interval: the envelope of the seeds' intervals (None when any lacks one)."""
    figures = [v for v, _ in values if v is not None]
    if not figures:
        return None, None
    intervals = [ci for _, ci in values]
    envelope = None if any(ci is None for ci in intervals) else [min(c[0] for c in intervals),
                                                                   max(c[1] for c in intervals)]
    return sum(figures) / len(figures), envelope


def collect_rows(e: Experiment, layout: Layout) -> list[dict[str, Any]]:
    """One row per (method, fine-tune seed, T), its figures averaged over the sampling seeds' results files; a
    missing file is an error."""
    rows = []
    for method in expanded_methods(e):
        for steps in method.steps:
            files = [layout.results(method, steps, seed) for seed in e.sample.seeds]
            for seed, file in zip(e.sample.seeds, files):
                if not file.is_file():
                    raise FileNotFoundError(f"{file} is missing: the evaluate stage for {method.label} T={steps} "
                                            f"seed={seed} has not run")
            results = [json.loads(f.read_text()) for f in files]
            r = results[0]
            nfe = [x["mean_nfe"] for x in results if x.get("mean_nfe") is not None]
            remasks = [(x.get("sampler_settings") or {}).get("mean_remasks") for x in results]
            row = {"method": method.label, "checkpoint": method.run or method.checkpoint, "arm": method.checkpoint,
                   "finetune_seed": method.finetune_seed, "sampler": method.sampler, "T": steps,
                   "mean_nfe": sum(nfe) / len(nfe) if nfe else None, "count": r.get("count"),
                   "entropy": _combine([_figure(x, ("entropy",), "entropy") for x in results])[0],
                   "results_files": [str(f) for f in files], "seeds": list(e.sample.seeds), "ci95": {},
                   "sanity": {}, "sanity_rows": {},
                   # samples with a non-symbol inside the frame: left out of hmm_nll's mean (read them together)
                   "hmm_invalid": _combine([_figure(x, ("hmm_nll",), "invalid") for x in results])[0],
                   "mean_remasks": None if any(v is None for v in remasks) else sum(remasks) / len(remasks),
                   "remask_improved": _combine([_figure(x, ("remask_correction",), "improved_fraction")
                                                for x in results])[0],
                   # counts summed over the sampling seeds (claim 3's Wilson intervals)
                   "remask_judged": sum((x.get("remask_correction") or {}).get("judged", 0) for x in results),
                   "remask_improved_count": sum((x.get("remask_correction") or {}).get("improved", 0)
                                                for x in results)}
            for key, path, field, check, _ in METRICS:
                row[key], row["ci95"][key] = _combine([_figure(x, path, field) for x in results])
                checks = [((x.get("sanity") or {}).get("checks") or {}).get(check) for x in results] if check else []
                row["sanity"][key] = (None if all(c is None for c in checks)
                                      else all(c is None or c["passed"] for c in checks))
                sanity = r.get("sanity") or {}
                row["sanity_rows"][key] = {name: dict(zip(("value", "ci95"), _figure(sanity.get(name) or {}, path,
                                                                                      field)))
                                           for name, _ in SANITY_LABELS}
            rows.append(row)
    return rows


def training_runs(e: Experiment) -> list[tuple[str, str]]:
    """(run name, label) of every training run."""
    runs = [("pretrain", "MDLM pretraining")]
    runs += [(run, f"arm {arm}" + ("" if run == arm else f" ({run})")) for run, arm in arm_runs(e)]
    runs += [(ar_run(e, seed), f"AR (seed {seed})") for seed in e.train.ar_seeds]
    return runs


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


def _fmt_ci(value: Any, ci: list[float] | None, digits: int = 3) -> str:
    return _fmt(value, digits) + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci and value is not None else "")


def metric_table(e: Experiment, rows: list[dict], key: str, title: str) -> list[str]:
    """A metric's table by T with its sanity rows first, every cell with its interval and mean NFE; "sanity
    failed" instead when a check failed."""
    if all(r[key] is None for r in rows):
        return []
    grid, digits = list(e.sample.steps), 1 if key in ("gen_ppl", "gen_ppl_2", "kn_ppl") else 3
    lines = [f"## {title} by number of steps T", ""]
    verdicts = [r["sanity"][key] for r in rows]
    if any(v is False for v in verdicts):
        failed = next(r for r in rows if r["sanity"][key] is False)
        real, shuffled = (failed["sanity_rows"][key][name]["value"] for name, _ in SANITY_LABELS)
        return [*lines, f"**sanity failed** (e.g. {failed['method']} T={failed['T']}: held-out real text "
                        f"{_fmt(real, digits)}, shuffled real text {_fmt(shuffled, digits)}; rule in "
                        "dsl_scale/evaluation/sanity.py): figures not reported.", ""]
    if any(v is None for v in verdicts) and not key.startswith("distinct"):
        lines += ["(no sanity rows for some cells: these figures are unchecked)", ""]
    lines += ["Cells: value [95 % interval] · mean NFE.", "",
              "| method | " + " | ".join(f"T={T}" for T in grid) + " |", "|---|" + "---|" * len(grid)]
    for name, label in SANITY_LABELS:
        cells = {}
        for r in rows:
            cells.setdefault(r["T"], r["sanity_rows"][key][name])
        if any((cells.get(T) or {}).get("value") is not None for T in grid):
            lines.append(f"| *{label}* | " + " | ".join(_fmt_ci((cells.get(T) or {}).get("value"),
                                                                 (cells.get(T) or {}).get("ci95"), digits)
                                                         for T in grid) + " |")
    for method in expanded_methods(e):
        cells = {r["T"]: r for r in rows if r["method"] == method.label}
        lines.append(f"| {method.label} | " + " | ".join(
            "–" if T not in cells else _fmt_ci(cells[T][key], cells[T]["ci95"][key], digits)
            + f" · {_fmt(cells[T]['mean_nfe'], 1)}" for T in grid) + " |")
    return [*lines, ""]


def analysis_table(e: Experiment, layout: Layout) -> list[str]:
    """Calibration and self-correction of each arm run, when their results files exist."""
    found = {run: json.loads(layout.analysis(run).read_text()) for run, _ in arm_runs(e)
             if layout.analysis(run).is_file()}
    if not found:
        return []
    lines = ["## The paper's analyses (raw x_θ at every position; see evaluation/calibration.py, self_correction.py)",
             "", "| arm | ECE visible | ECE masked | visible conf / acc | masked conf / acc | repaired | broken |",
             "|---|---|---|---|---|---|---|"]
    for arm, r in found.items():
        cal, fix = r.get("calibration") or {}, r.get("self_correction") or {}
        cells = []
        for where in ("visible", "masked"):
            cells.append(_fmt((cal.get(where) or {}).get("ece")))
        for where in ("visible", "masked"):
            part = cal.get(where) or {}
            cells.append(f"{_fmt(part.get('mean_confidence'))} / {_fmt(part.get('accuracy'))}")
        cells += [_fmt_ci(fix.get("repaired"), fix.get("repaired_ci95")), _fmt_ci(fix.get("broken"),
                                                                                  fix.get("broken_ci95"))]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    setting = next(iter(found.values()))
    lines += ["", f"Calibration: {(setting.get('calibration') or {}).get('settings', {}).get('binning', '–')} bins; "
              f"self-correction: {_fmt((setting.get('self_correction') or {}).get('rate'), 2)} of the inner tokens "
              "corrupted, one forward pass.", ""]
    return lines


LOWER_IS_BETTER = {"frechet", "hmm_nll", "eps_nll", "tv_2", "tv_3", "gen_ppl", "gen_ppl_2", "kn_ppl"}
COLUMNS = (("eps_nll", "ε-NLL", 3), ("hmm_nll", "NLL/symbol", 3), ("tv_2", "TV-2", 3), ("tv_3", "TV-3", 3),
           ("mauve", "MAUVE", 3), ("frechet", "Fréchet", 3), ("gen_ppl", "gen-PPL", 1), ("gen_ppl_2", "gen-PPL 2", 1),
           ("kn_ppl", "KN-PPL", 1), ("distinct_4", "distinct-4", 3), ("mean_remasks", "remasks", 1),
           ("remask_improved", "remasks improving", 3))


def markdown(e: Experiment, rows: list[dict], runs: dict[str, dict], wall_s: float, layout: Layout) -> str:
    t, s, d, v = e.train, e.sample, e.data, e.eval
    lines = [
        f"# Reproduction `{e.name}`: does DSL fine-tuning make ReMDM sampling more step-efficient?",
        "",
        f"Data `{d.source}` (tokenizer `{d.tokenizer}`, L = {d.seq_len}; MAUVE references: held-out validation "
        f"blocks), model `{t.model}`, seed {e.seed}. MDLM pretraining {t.pretrain_steps} steps, then "
        f"{t.extra_steps} more steps for each arm ("
        + "; ".join(f"{a.name}: objective={a.objective} {' '.join(a.overrides)} from {a.init_from}".rstrip()
                    for a in t.arms)
        + f"), fine-tune seeds {list(t.finetune_seeds)}, "
        f"global batch {t.global_batch}; AR {t.ar_steps} steps (seeds {list(t.ar_seeds)}). "
        f"{s.num_samples} samples per cell and sampling seed, seeds {list(s.seeds)} averaged (intervals: the "
        f"envelope of the seeds' bootstrap 95 % intervals), top-p {s.top_p}; metrics {', '.join(v.metrics)}; "
        f"MAUVE / Fréchet featurizer `{v.featurizer}`. Wall time {wall_s / 60:.1f} min (the first stage's start to "
        f"the last one's end; {e.workers} stage(s) at once).",
        *(["", e.note] if e.note else []),
        "",
    ]
    for key, _, _, _, title in METRICS:
        lines += metric_table(e, rows, key, title)
    shown = [c for c in COLUMNS if any(r[c[0]] is not None for r in rows)]
    invalid = int(any(r["hmm_invalid"] is not None for r in rows))
    from dsl_scale.experiment.verdicts import verdict_lines

    lines += [*verdict_lines(all_verdicts(e, rows, layout)), *step_efficiency(e, rows), "",
              *analysis_table(e, layout), "## Every figure", "",
              "| method | T | mean NFE | " + " | ".join(c[1] for c in shown) + " | entropy | samples |"
              + (" invalid (NLL) |" if invalid else ""), "|---|---|---|" + "---|" * (len(shown) + 2 + invalid)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['T']} | {_fmt(r['mean_nfe'], 1)} | "
                     + "".join(f"{_fmt(r[key], digits)} | " for key, _, digits in shown)
                     + f"{_fmt(r['entropy'], 3)} | {r['count']} |"
                     + (f" {_fmt(r['hmm_invalid'], 1)} |" if invalid else ""))
    lines += ["", "## Training runs", "", "| run | steps | last validation loss | tokens/s |", "|---|---|---|---|"]
    for key, label in training_runs(e):
        run = runs.get(key, {})
        lines.append(f"| {label} | {run.get('steps', '–')} | {_fmt(run.get('val_loss'))} | "
                     f"{_fmt(run.get('tokens_per_s'), 0)} |")
    lines += ["", "Validation losses are each objective's own bound (MDLM NELBO, DSL cross-entropy, AR NLL) per "
              "token: compare them within a row over time, not across rows.", ""]
    return "\n".join(lines)


def step_efficiency(e: Experiment, rows: list[dict]) -> list[str]:
    """docs/method.md §5's claim measured: the fewest denoiser calls with which each method reaches the quality
    (quality_metric: the exact NLL on synthetic data, else MAUVE) of MDLM + ReMDM-loop at the largest T."""
    key = quality_metric(e)
    base = next((m for m in e.sample.methods if m.checkpoint == "mdlm" and m.sampler == "remdm_loop"), None)
    if base is None or key == "entropy" or any(r["sanity"].get(key) is False for r in rows):
        return []
    top = max(e.sample.steps)
    target = next((r[key] for r in rows if r["method"] == base.label and r["T"] == top), None)
    if target is None:
        return []
    lower = key in LOWER_IS_BETTER

    def reaches(value: float | None) -> bool:
        return value is not None and (value <= target if lower else value >= target)

    lines = [f"Fewest mean NFE reaching {base.label}'s {key} at T={top} ({target:.3f}):", ""]
    for m in e.sample.methods:
        reached = [r["mean_nfe"] or r["T"] for r in rows if r["method"] == m.label and reaches(r[key])]
        lines.append(f"- {m.label}: {f'{min(reached):.1f}' if reached else 'not reached'}")
    return lines


def all_verdicts(e: Experiment, rows: list[dict], layout: Layout) -> dict[str, Any]:
    """The preregistered rules experiment/verdicts.py computes (claims 1, 3, 4, 5)."""
    from dsl_scale.experiment.config import arm_run
    from dsl_scale.experiment.verdicts import control_verdicts, verdicts

    analyses = {c: json.loads(layout.analysis(c).read_text()) for c, _ in arm_runs(e) if layout.analysis(c).is_file()}
    seeds = list(e.train.finetune_seeds)
    return {**verdicts(rows, list(e.eval.metrics), seeds),
            **control_verdicts(rows, analyses, seeds, lambda arm, s: arm_run(e, arm, s))}


def write_report(e: Experiment, layout: Layout, stages: list[dict], wall_s: float, plot: bool = True) -> dict:
    """results.json, results.md and quality_vs_nfe.png under the output directory; returns results.json's content."""
    rows = collect_rows(e, layout)
    runs = {key: run_summary(layout.run(key)) for key, _ in training_runs(e)}
    analyses = {c: json.loads(layout.analysis(c).read_text()) for c, _ in arm_runs(e) if layout.analysis(c).is_file()}
    results = {"experiment": experiment_dict(e), "tokenizer": e.data.tokenizer, "seed": e.seed, "rows": rows,
               "runs": runs, "analyses": analyses, "stages": stages, "wall_time_s": wall_s,
               "verdicts": all_verdicts(e, rows, layout)}
    (layout.root / "results.json").write_text(json.dumps(results, indent=2))
    (layout.root / "results.md").write_text(markdown(e, rows, runs, wall_s, layout))
    if plot:
        from dsl_scale.experiment.plot import plot_quality_vs_nfe  # matplotlib: only when plotting

        curves = [(key, title) for key, _, _, _, title in METRICS
                  if any(r[key] is not None and r["sanity"][key] is not False for r in rows)]
        plot_quality_vs_nfe(rows, [m.label for m in expanded_methods(e)], [*curves, ("entropy", "entropy (nats)")],
                            layout.root / "quality_vs_nfe.png")
    return results
