"""The paper's claims across the testbeds: docs/results/PREREGISTRATION.md's rules that read more than one run
(claim 1 on both synthetic bases, self-correction and calibration on both testbeds), from the `verdicts` each
run's results.json holds (experiment/verdicts.py), as one table. A testbed that has not run gives "no verdict"
naming it, never a pass."""

from __future__ import annotations

from typing import Any

from dsl_scale.experiment.verdicts import seeds_verdict

TESTBED_NAMES = {"synthetic": "synthetic, 800-step base", "synthetic_base2000": "synthetic, 2,000-step base",
                 "text": "text"}


def _entry(results: dict[str, dict | None], testbed: str, key: str) -> dict | None:
    run = results.get(testbed)
    return None if run is None else (run.get("verdicts") or {}).get(key)


def on_every(entries: dict[str, dict | None]) -> str:
    """A rule that must hold on every testbed named: per fine-tune seed it passes only where it passes on all of
    them, then the seed rule (both seeds: holds; one: seeds disagree; none: fails)."""
    missing = [TESTBED_NAMES[t] for t, e in entries.items() if e is None]
    if missing:  # with the verdict of each testbed that did run beside it
        return f"no verdict ({', '.join(missing)} not run)" + "".join(
            f"; {TESTBED_NAMES[t]}: {e['verdict']}" for t, e in entries.items() if e is not None)
    seeds = sorted({s for e in entries.values() for s in e["per_seed"]})
    per_seed = {}
    for seed in seeds:
        outcomes = [e["per_seed"].get(seed, {"passed": None, "why": "cells missing"}) for e in entries.values()]
        passed = None if any(o["passed"] is None for o in outcomes) else all(o["passed"] for o in outcomes)
        per_seed[seed] = {"passed": passed, "mode_seeking": any(o.get("mode_seeking") for o in outcomes),
                          "why": "; ".join(o.get("why", "") for o in outcomes if o["passed"] is None)}
    return seeds_verdict(per_seed)


def both_bases(results: dict[str, dict | None], key: str) -> str:
    """Claim 1 on the synthetic testbed: holds on both bases, on one (named), or as the seed rule says."""
    entries = {t: _entry(results, t, key) for t in ("synthetic", "synthetic_base2000")}
    held = [t for t, e in entries.items() if e is not None and e["verdict"] == "holds"]
    if len(held) == 2:
        return "holds"
    if held and all(e is not None for e in entries.values()):
        return f"holds for the {TESTBED_NAMES[held[0]].split(', ')[1]} only"
    return on_every(entries)


def single(results: dict[str, dict | None], testbed: str, key: str) -> str:
    entry = _entry(results, testbed, key)
    return f"no verdict ({TESTBED_NAMES[testbed]} not run)" if entry is None else entry["verdict"]


def claims_table(results: dict[str, dict | None]) -> list[dict[str, Any]]:
    """(claim, where, verdict) rows for the results document; `results` maps testbed name to results.json or
    None."""
    rows = [
        ("~4× fewer NFE (DSL at B = 16 vs MDLM at B = 64), DSL ours", "synthetic, both bases",
         both_bases(results, "claim1_dsl")),
        ("~4× fewer NFE, DSL as its authors train it", "synthetic, both bases",
         both_bases(results, "claim1_dsl_authors")),
        ("~4× fewer NFE, DSL ours", "text", single(results, "text", "claim1_dsl")),
        ("~4× fewer NFE, DSL as its authors train it", "text", single(results, "text", "claim1_dsl_authors")),
        ("training alone (same sampler, DSL arm vs MDLM arm)", "synthetic, 800-step base",
         single(results, "synthetic", "claim2")),
        ("training alone", "text", single(results, "text", "claim2")),
        ("self-correction in the sampler (vs the discrete-corruption control)", "synthetic, 800-step base",
         single(results, "synthetic", "claim3_in_sampler")),
        ("self-correction in one pass (vs the control)", "both testbeds",
         on_every({t: _entry(results, t, "claim3_one_pass") for t in ("synthetic", "text")})),
        ("calibration (vs the control)", "both testbeds",
         on_every({t: _entry(results, t, "claim4") for t in ("synthetic", "text")})),
        ("matches AR at B = 64", "synthetic, 800-step base", single(results, "synthetic", "claim5")),
        ("matches AR at B = 64", "text", single(results, "text", "claim5")),
        ("better MAUVE at low budgets (B = 8, 16)", "text", single(results, "text", "claim6")),
    ]
    return [{"claim": c, "where": w, "verdict": v} for c, w, v in rows]


def claims_markdown(results: dict[str, dict | None]) -> list[str]:
    lines = ["| the paper's claim | testbed | verdict (the preregistered rule) |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['where']} | **{r['verdict']}** |" for r in claims_table(results)]
    return lines
