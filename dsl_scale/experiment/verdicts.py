"""docs/results/PREREGISTRATION.md's rules for claims 1 ("~4× fewer NFE"), 2 (training alone), 3 (self-correction
against the discrete-corruption control), 4 (calibration against it), 5 ("matches AR") and 6 (MAUVE), computed from the
report's rows and the arms' analyses, so the verdict a run gives is the rule's and not a reading of the tables.
Each rule is judged per fine-tune seed; it holds only when it holds for every seed.

Rows (experiment/report.py collect_rows) carry their arm, sampler, fine-tune seed, mean NFE and each metric with its
interval and sanity verdict. A row competes at budget B when its mean NFE ≤ B + 1; frontier rows (", τ=" in the label)
and the untrained-head row never compete.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MDLM_SAMPLERS = frozenset({"mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_loop", "remdm_loop_short",
                           "confidence_unmask"})
DSL_SAMPLERS = frozenset({"mdlm", "remdm_loop", "remdm_confidence", "confidence_unmask", "dsl_llada_sde"})
HIGHER_IS_BETTER = frozenset({"mauve", "distinct_4"})
# tie margins: absolute, or (for the "relative" ones) a fraction of the baseline's value
MARGINS = {"eps_nll": 0.05, "tv_2": 0.01, "tv_3": 0.01, "mauve": 0.05, "distinct_4": 0.03}
RELATIVE_MARGINS = {"gen_ppl": 0.02, "gen_ppl_2": 0.02, "kn_ppl": 0.02, "frechet": 0.05}


def margin(metric: str, baseline: float, scale: float = 1.0) -> float:
    if metric in RELATIVE_MARGINS:
        return RELATIVE_MARGINS[metric] * scale * abs(baseline)
    return MARGINS[metric] * scale


def at_least_as_good(d: dict, m: dict, metric: str, scale: float = 1.0) -> bool:
    """D's point estimate no worse than M's by more than the metric's tie margin (times `scale`)."""
    dv, mv = d[metric], m[metric]
    if metric in HIGHER_IS_BETTER:
        return dv >= mv - margin(metric, mv, scale)
    return dv <= mv + margin(metric, mv, scale)


def diverse(d: dict, m: dict) -> bool:
    """The mode-seeking guard: D's distinct-4 at least as good as M's (margin 0.03); no figure, no objection."""
    return d.get("distinct_4") is None or m.get("distinct_4") is None or at_least_as_good(d, m, "distinct_4")


def competing(rows: list[dict], arm: str, samplers: frozenset, budget: int, seed: int | None) -> list[dict]:
    return [r for r in rows if r["arm"] == arm and r["sampler"] in samplers and ", τ=" not in r["method"]
            and (seed is None or r["finetune_seed"] == seed) and (r["mean_nfe"] or r["T"]) <= budget + 1]


def best(rows: list[dict], metric: str) -> dict | None:
    scored = [r for r in rows if r.get(metric) is not None]
    if not scored:
        return None
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    return min(scored, key=lambda r: sign * r[metric])


def _sane(rows: list[dict], metrics: list[str]) -> bool:
    return all(r["sanity"].get(m) is not False for r in rows for m in metrics)


def step_factor_rule(rows: list[dict], metrics: list[str], seed: int, dsl_arm: str = "dsl", low: int = 16,
                     high: int = 64, baseline_arms: tuple[str, ...] = ("mdlm", "mdlm_2x"),
                     guard: bool = True) -> dict[str, Any]:
    """Claim 1 for one fine-tune seed: some DSL row at budget `low` is at least as good as the best MDLM row (per
    metric) of each baseline arm at budget `high` on every metric, and passes the distinct-4 guard against them."""
    baselines = {}
    for arm in baseline_arms:
        pool = competing(rows, arm, MDLM_SAMPLERS, high, seed)
        if pool:
            baselines[arm] = {m: best(pool, m) for m in metrics}
    candidates = competing(rows, dsl_arm, DSL_SAMPLERS, low, seed)
    if not candidates or not baselines or any(b is None for per in baselines.values() for b in per.values()):
        return {"passed": None, "why": "cells missing"}
    involved = candidates + [b for per in baselines.values() for b in per.values()]
    if not _sane(involved, metrics):
        return {"passed": None, "why": "no verdict: sanity failed"}
    seeking = None
    for d in candidates:
        if not all(d.get(m) is not None and at_least_as_good(d, b, m)
                   for per in baselines.values() for m, b in per.items()):
            continue
        if not guard or all(diverse(d, b) for per in baselines.values() for b in per.values()):
            return {"passed": True, "row": d["method"], "T": d["T"],
                    "against": {arm: {m: f"{b['method']} T={b['T']}" for m, b in per.items()}
                                for arm, per in baselines.items()}}
        seeking = seeking or d
    if seeking is not None:
        return {"passed": False, "mode_seeking": True,
                "why": f"{seeking['method']} T={seeking['T']} meets the metrics with a lower distinct-4 (mode seeking)"}
    return {"passed": False, "why": f"no DSL row at budget {low} meets every condition"}


def better(d: dict, m: dict, metric: str) -> bool:
    """D's 95 % interval entirely on the good side of M's (no interval: no)."""
    dc, mc = (d.get("ci95") or {}).get(metric), (m.get("ci95") or {}).get(metric)
    if not dc or not mc:
        return False
    return dc[0] > mc[1] if metric in HIGHER_IS_BETTER else dc[1] < mc[0]


TRAINING_ALONE_SAMPLERS = ("mdlm", "remdm_loop", "confidence_unmask")


def training_alone_rule(rows: list[dict], primary: str, secondary: str, seeds: list[int],
                        budgets: tuple[int, ...] = (8, 16, 32, 64)) -> dict[str, Any]:
    """Claim 2: `dsl` + S against `mdlm` + S at T = B for S in TRAINING_ALONE_SAMPLERS. Holds when, for every seed,
    DSL is at least as good in every pair on both metrics and better in half of them on the primary one; fails when
    it is worse on the primary metric in 4 or more pairs for some seed."""
    def pick(arm: str, sampler: str, T: int, seed: int) -> dict | None:
        return next((r for r in rows if r["arm"] == arm and r["sampler"] == sampler and r["T"] == T
                     and r["finetune_seed"] == seed and ", τ=" not in r["method"]), None)

    per_seed: dict[int, dict] = {}
    for seed in seeds:
        pairs = [(pick("dsl", S, T, seed), pick("mdlm", S, T, seed)) for S in TRAINING_ALONE_SAMPLERS for T in budgets]
        if any(d is None or m is None or d.get(primary) is None or m.get(primary) is None for d, m in pairs):
            per_seed[seed] = {"passed": None, "why": "cells missing"}
            continue
        if not _sane([r for pair in pairs for r in pair], [primary, secondary]):
            per_seed[seed] = {"passed": None, "why": "no verdict: sanity failed"}
            continue
        both = sum(at_least_as_good(d, m, primary) and (d.get(secondary) is None or m.get(secondary) is None
                                                        or at_least_as_good(d, m, secondary)) for d, m in pairs)
        guarded = sum(diverse(d, m) for d, m in pairs)
        wins = sum(better(d, m, primary) for d, m in pairs)
        worse = sum(not at_least_as_good(d, m, primary) for d, m in pairs)
        met = both == len(pairs) and 2 * wins >= len(pairs)
        per_seed[seed] = {"passed": met and guarded == len(pairs), "worse": worse,
                          "mode_seeking": met and guarded < len(pairs),
                          "row": f"{both}/{len(pairs)} at least as good, {wins} better, {worse} worse, "
                                 f"distinct-4 guard {guarded}/{len(pairs)}"}
    outcomes = list(per_seed.values())
    if any(v["passed"] is None for v in outcomes):
        verdict = seeds_verdict(per_seed)
    elif any(v.get("mode_seeking") for v in outcomes):
        verdict = "fails (mode seeking)"
    elif all(v["passed"] for v in outcomes):
        verdict = "holds"
    elif any(v["worse"] >= 4 for v in outcomes):
        verdict = "fails"
    else:
        verdict = "not supported"
    return {"verdict": verdict, "per_seed": per_seed, "metrics": [primary, secondary]}


def mauve_rule(rows: list[dict], seeds: list[int], budgets: tuple[int, int] = (8, 16)) -> dict[str, Any]:
    """Claim 6: a DSL row better than the best MDLM row by MAUVE (disjoint intervals) at one of the budgets and
    not worse at the other, for every seed; only ties everywhere is "inconclusive (no power)"."""
    per_seed: dict[int, dict] = {}
    ties_only = True
    for seed in seeds:
        outcome = {}
        for B in budgets:
            base = best(competing(rows, "mdlm", MDLM_SAMPLERS, B, seed), "mauve")
            dsl = [d for d in competing(rows, "dsl", DSL_SAMPLERS, B, seed) if d.get("mauve") is not None]
            if base is None or not dsl:
                outcome = None
                break
            top = best(dsl, "mauve")
            outcome[B] = ("better" if better(top, base, "mauve") else
                          "tie" if at_least_as_good(top, base, "mauve") else "worse")
        if outcome is None:
            per_seed[seed] = {"passed": None, "why": "cells missing"}
            continue
        ties_only &= all(v == "tie" for v in outcome.values())
        per_seed[seed] = {"passed": "better" in outcome.values() and "worse" not in outcome.values(),
                          "row": ", ".join(f"B={B}: {v}" for B, v in outcome.items())}
    verdict = seeds_verdict(per_seed)
    if verdict == "fails" and ties_only:
        verdict = "inconclusive (no power)"
    return {"verdict": verdict, "per_seed": per_seed}


def seeds_verdict(per_seed: dict[int, dict]) -> str:
    outcomes = [v["passed"] for v in per_seed.values()]
    if any(o is None for o in outcomes):
        return "no verdict (" + "; ".join(v.get("why", "") for v in per_seed.values() if v["passed"] is None) + ")"
    if all(outcomes):
        return "holds"
    if any(v.get("mode_seeking") for v in per_seed.values()):
        return "fails (mode seeking)"
    return "not supported (seeds disagree)" if any(outcomes) else "fails"


def claim_metrics(metrics: list[str]) -> tuple[list[str], list[str]]:
    """(claim 1's metrics, claim 5's metrics) for the experiment's eval.metrics: synthetic ε-NLL and bigram TV;
    text both AR scorers, Kneser–Ney and Fréchet (claim 5: the second scorer and Kneser–Ney only)."""
    if "eps_nll" in metrics:
        both = [m for m in ("eps_nll", "tv_2") if m == "eps_nll" or "hmm_tv" in metrics]
        return both, both
    step = [m for m in ("gen_ppl", "gen_ppl_2", "kn_ppl", "frechet") if m.split("_2")[0] in metrics or m in metrics]
    return step, [m for m in ("gen_ppl_2", "kn_ppl") if m in step]


def verdicts(rows: list[dict], metrics: list[str], finetune_seeds: list[int]) -> dict[str, Any]:
    """Claim 1 for both DSL arms, claim 5 for the primary one (text: margin 5 % instead of 2 %): per seed and
    overall."""
    step, ar_metrics = claim_metrics(metrics)
    out: dict[str, Any] = {"metrics": step}
    for arm in ("dsl", "dsl_authors"):
        per_seed = {s: step_factor_rule(rows, step, s, arm) for s in finetune_seeds}
        out[f"claim1_{arm}"] = {"verdict": seeds_verdict(per_seed), "per_seed": per_seed}
    primary, secondary = ("eps_nll", "tv_2") if "eps_nll" in metrics else ("gen_ppl_2", "kn_ppl")
    out["claim2"] = training_alone_rule(rows, primary, secondary, finetune_seeds)
    if "mauve" in metrics:
        out["claim6"] = mauve_rule(rows, finetune_seeds)
    ar_rows = [r for r in rows if r["sampler"] == "ar"]
    if ar_rows:
        per_seed = {}
        for s in finetune_seeds:
            candidates = competing(rows, "dsl", DSL_SAMPLERS, 64, s)
            met = [d for d in candidates if all(d.get(m) is not None and ar_rows[0].get(m) is not None
                                                and at_least_as_good(d, ar_rows[0], m, 2.5 if m in RELATIVE_MARGINS
                                                                     else 1.0) for m in ar_metrics)]
            ok = [d for d in met if diverse(d, ar_rows[0])]
            per_seed[s] = {"passed": bool(ok), "mode_seeking": bool(met) and not ok,
                           **({"row": ok[0]["method"]} if ok else {"row": f"{met[0]['method']}: mode seeking"}
                              if met else {})}
            if not _sane(candidates + ar_rows, ar_metrics):
                per_seed[s] = {"passed": None, "why": "no verdict: sanity failed"}
        out["claim5"] = {"verdict": seeds_verdict(per_seed), "per_seed": per_seed, "metrics": ar_metrics}
    return out


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def in_sampler_rule(rows: list[dict], seed: int, budgets: tuple[int, ...] = (16, 64)) -> dict[str, Any]:
    """Claim 3, in-sampler: DSL + confidence remasking's fraction of remasks that raise the likelihood beats the
    control's (same sampler) by >= 0.05 with disjoint Wilson intervals, at every budget."""
    def pick(arm: str, T: int) -> dict | None:
        return next((r for r in rows if r["arm"] == arm and r["sampler"] == "remdm_confidence" and r["T"] == T
                     and r["finetune_seed"] == seed and ", τ=" not in r["method"]), None)

    detail = {}
    for T in budgets:
        d, c = pick("dsl", T), pick("corrupt", T)
        if d is None or c is None or not d.get("remask_judged") or not c.get("remask_judged"):
            return {"passed": None, "why": "cells missing"}
        dl, _ = wilson(d["remask_improved_count"], d["remask_judged"])
        _, ch = wilson(c["remask_improved_count"], c["remask_judged"])
        detail[T] = (d["remask_improved"], c["remask_improved"])
        if not (d["remask_improved"] >= c["remask_improved"] + 0.05 and dl > ch):
            return {"passed": False, "why": f"T={T}: {d['remask_improved']:.3f} vs {c['remask_improved']:.3f}"}
    return {"passed": True, "row": ", ".join(f"T={T}: {a:.3f} vs {b:.3f}" for T, (a, b) in detail.items())}


def analysis_rules(analyses: dict[str, dict], dsl_run: str, control_run: str) -> dict[str, dict[str, Any]]:
    """Claim 3 one-pass (net repair = repaired − broken, +0.05 and disjoint repaired intervals) and claim 4
    (visible ECE 0.02 below the control's) for one fine-tune seed."""
    d, c = analyses.get(dsl_run), analyses.get(control_run)
    if d is None or c is None:
        missing = {"passed": None, "why": "analyses missing"}
        return {"one_pass": missing, "calibration": missing}
    dfix, cfix = d.get("self_correction") or {}, c.get("self_correction") or {}
    d_net, c_net = dfix["repaired"] - dfix["broken"], cfix["repaired"] - cfix["broken"]
    disjoint = (dfix.get("repaired_ci95") and cfix.get("repaired_ci95")
                and dfix["repaired_ci95"][0] > cfix["repaired_ci95"][1])
    d_ece, c_ece = d["calibration"]["visible"]["ece"], c["calibration"]["visible"]["ece"]
    return {"one_pass": {"passed": bool(d_net >= c_net + 0.05 and disjoint),
                         "row": f"net repair {d_net:.3f} vs {c_net:.3f}"},
            "calibration": {"passed": bool(d_ece <= c_ece - 0.02), "row": f"visible ECE {d_ece:.3f} vs {c_ece:.3f}"}}


def control_verdicts(rows: list[dict], analyses: dict[str, dict], seeds: list[int],
                     run_of: Callable[[str, int], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per_seed = {s: in_sampler_rule(rows, s) for s in seeds}
    if any(v["passed"] is not None for v in per_seed.values()) or any(r.get("remask_judged") for r in rows):
        out["claim3_in_sampler"] = {"verdict": seeds_verdict(per_seed), "per_seed": per_seed}
    both = {s: analysis_rules(analyses, run_of("dsl", s), run_of("corrupt", s)) for s in seeds}
    out["claim3_one_pass"] = {"verdict": seeds_verdict({s: v["one_pass"] for s, v in both.items()}),
                              "per_seed": {s: v["one_pass"] for s, v in both.items()}}
    out["claim4"] = {"verdict": seeds_verdict({s: v["calibration"] for s, v in both.items()}),
                     "per_seed": {s: v["calibration"] for s, v in both.items()}}
    return out


def verdict_lines(result: dict[str, Any]) -> list[str]:
    lines = ["## Preregistered rules (docs/results/PREREGISTRATION.md), computed", "",
             f"Claim 1 metrics: {', '.join(result['metrics'])}.", ""]
    for key, title in (("claim1_dsl", "Claim 1, ~4× fewer NFE, DSL (ours)"),
                       ("claim1_dsl_authors", "Claim 1, ~4× fewer NFE, DSL as its authors train it"),
                       ("claim2", "Claim 2, training alone (same sampler, DSL vs MDLM arm)"),
                       ("claim3_in_sampler", "Claim 3, in-sampler self-correction vs the control"),
                       ("claim3_one_pass", "Claim 3, one-pass self-correction vs the control"),
                       ("claim4", "Claim 4, calibration vs the control"),
                       ("claim5", "Claim 5, matches AR at B = 64"),
                       ("claim6", "Claim 6, MAUVE at low budgets")):
        if key in result:
            entry = result[key]
            seeds = "; ".join(f"seed {s}: " + ("–" if v["passed"] is None else "yes" if v["passed"] else "no")
                              + (f" ({v['row']})" if v.get("row") else "") for s, v in entry["per_seed"].items())
            lines.append(f"- {title}: **{entry['verdict']}** ({seeds})")
    return [*lines, ""]
