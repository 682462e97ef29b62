"""PREREGISTRATION.md's claim-1 and claim-5 rules computed from report rows (experiment/verdicts.py): tie margins,
the best baseline per metric, the NFE budget, the distinct-4 guard, sanity, and the seed rule."""

from __future__ import annotations

from dsl_scale.experiment.verdicts import at_least_as_good, seeds_verdict, step_factor_rule, verdicts


def row(method: str, arm: str, sampler: str, T: int, seed: int | None, nll: float, tv: float,
        distinct: float = 0.7, nfe: float | None = None, sane: bool = True) -> dict:
    return {"method": method, "arm": arm, "sampler": sampler, "T": T, "finetune_seed": seed,
            "mean_nfe": T if nfe is None else nfe, "eps_nll": nll, "tv_2": tv, "distinct_4": distinct,
            "sanity": {"eps_nll": sane, "tv_2": sane, "distinct_4": None}}


def grid(seed: int, dsl_nll: float, dsl_tv: float = 0.05, dsl_distinct: float = 0.7, sane: bool = True) -> list[dict]:
    return [
        row("MDLM", "mdlm", "mdlm", 64, seed, 4.0, 0.08),
        row("MDLM + ReMDM-cap", "mdlm", "remdm_cap", 64, seed, 4.2, 0.04),  # the best TV baseline
        row("MDLM + confidence unmasking", "mdlm", "confidence_unmask", 64, seed, 3.9, 0.09),  # best NLL
        row("MDLM-2x", "mdlm_2x", "mdlm", 64, seed, 3.95, 0.05),
        row("MDLM + confidence remasking (untrained head)", "mdlm", "remdm_confidence", 64, seed, 1.0, 0.0),
        row("DSL + confidence remasking", "dsl", "remdm_confidence", 16, seed, dsl_nll, dsl_tv, dsl_distinct,
            sane=sane),
        row("DSL + confidence remasking", "dsl", "remdm_confidence", 64, seed, 1.0, 0.0),  # NFE 64: not at B = 16
        row("DSL + confidence remasking, τ=0.8", "dsl", "remdm_confidence", 16, seed, 1.0, 0.0),  # frontier
    ]


def test_margins_and_directions():
    assert at_least_as_good({"eps_nll": 3.94}, {"eps_nll": 3.9}, "eps_nll")
    assert not at_least_as_good({"eps_nll": 3.96}, {"eps_nll": 3.9}, "eps_nll")
    assert at_least_as_good({"gen_ppl": 10.19}, {"gen_ppl": 10.0}, "gen_ppl")  # 2 % of 10
    assert not at_least_as_good({"gen_ppl": 10.21}, {"gen_ppl": 10.0}, "gen_ppl")
    assert at_least_as_good({"mauve": 0.46}, {"mauve": 0.5}, "mauve") and not at_least_as_good(
        {"mauve": 0.44}, {"mauve": 0.5}, "mauve")


def test_step_factor_rule_reads_the_best_baseline_per_metric_at_the_budget():
    # NLL 3.94 is within 0.05 of the best baseline NLL (3.9); TV 0.049 within 0.01 of the best TV (0.04)
    ok = step_factor_rule(grid(0, 3.94, 0.049), ["eps_nll", "tv_2"], 0)
    assert ok["passed"] and ok["row"] == "DSL + confidence remasking" and ok["T"] == 16
    assert ok["against"]["mdlm"] == {"eps_nll": "MDLM + confidence unmasking T=64", "tv_2": "MDLM + ReMDM-cap T=64"}
    assert not step_factor_rule(grid(0, 3.94, 0.051), ["eps_nll", "tv_2"], 0)["passed"]  # TV too far
    assert not step_factor_rule(grid(0, 3.96, 0.04), ["eps_nll", "tv_2"], 0)["passed"]  # NLL too far
    guard = step_factor_rule(grid(0, 3.5, 0.01, dsl_distinct=0.6), ["eps_nll", "tv_2"], 0)
    assert guard["passed"] is False and guard["mode_seeking"]  # distinct-4 0.6 < 0.7 − 0.03
    assert seeds_verdict({0: guard, 1: {"passed": True}}) == "fails (mode seeking)"
    assert step_factor_rule(grid(0, 3.5, 0.01, sane=False), ["eps_nll", "tv_2"], 0)["passed"] is None


def test_seed_rule_and_the_report_entry():
    assert seeds_verdict({0: {"passed": True}, 1: {"passed": True}}) == "holds"
    assert seeds_verdict({0: {"passed": True}, 1: {"passed": False}}) == "not supported (seeds disagree)"
    assert seeds_verdict({0: {"passed": False}, 1: {"passed": False}}) == "fails"
    rows = grid(0, 3.9, 0.04) + grid(1, 4.5, 0.04)
    result = verdicts([*rows, row("AR", "ar", "ar", 64, None, 3.0, 0.03, nfe=127)], ["eps_nll", "hmm_tv"], [0, 1])
    assert result["claim1_dsl"]["verdict"] == "not supported (seeds disagree)"
    assert result["claim1_dsl_authors"]["verdict"].startswith("no verdict")  # no such arm in these rows
    assert result["claim5"]["verdict"] == "holds"  # the DSL rows at T = 64 (1.0, 0.0) beat the AR row
    result = verdicts([*rows, row("AR", "ar", "ar", 64, None, 0.9, 0.0, nfe=127)], ["eps_nll", "hmm_tv"], [0, 1])
    assert result["claim5"]["verdict"] == "fails"  # 1.0 > 0.9 + 0.05
    result = verdicts([*rows, row("AR", "ar", "ar", 64, None, 3.0, 0.03, distinct=0.9, nfe=127)],
                      ["eps_nll", "hmm_tv"], [0, 1])
    assert result["claim5"]["verdict"] == "fails (mode seeking)"  # better NLL and TV, distinct-4 0.7 < 0.9 − 0.03


def test_control_rules_read_the_remask_counts_and_the_analyses():
    from dsl_scale.experiment.verdicts import control_verdicts, wilson

    low, high = wilson(30, 100)
    assert 0.2 < low < 0.3 < high < 0.4  # 0.219, 0.396

    def remasking(arm: str, T: int, improved: int, judged: int) -> dict:
        return {"method": f"{arm} + confidence remasking", "arm": arm, "sampler": "remdm_confidence", "T": T,
                "finetune_seed": 0, "remask_improved": improved / judged, "remask_judged": judged,
                "remask_improved_count": improved}

    def analysis(repaired: float, broken: float, ece: float) -> dict:
        return {"self_correction": {"repaired": repaired, "broken": broken,
                                    "repaired_ci95": [repaired - 0.02, repaired + 0.02]},
                "calibration": {"visible": {"ece": ece}}}

    rows = [remasking("dsl", 16, 300, 500), remasking("corrupt", 16, 200, 500),
            remasking("dsl", 64, 310, 500), remasking("corrupt", 64, 290, 500)]  # T = 64: 0.62 vs 0.58, < 0.05
    analyses = {"dsl": analysis(0.3, 0.01, 0.10), "corrupt": analysis(0.2, 0.05, 0.11)}
    out = control_verdicts(rows, analyses, [0], lambda arm, seed: arm)
    assert out["claim3_in_sampler"]["verdict"] == "fails"
    assert out["claim3_one_pass"]["verdict"] == "holds"  # net 0.29 vs 0.15, repaired intervals disjoint
    assert out["claim4"]["verdict"] == "fails"  # ECE 0.10 is not 0.02 below 0.11
    rows[2] = remasking("dsl", 64, 400, 500)
    assert control_verdicts(rows, analyses, [0], lambda arm, seed: arm)["claim3_in_sampler"]["verdict"] == "holds"
    assert control_verdicts(rows, {}, [0], lambda a, s: a)["claim4"]["verdict"].startswith("no verdict")


def test_training_alone_and_mauve_rules():
    from dsl_scale.experiment.verdicts import mauve_rule, training_alone_rule

    def cell(arm: str, sampler: str, T: int, nll: float, half: float = 0.02) -> dict:
        return {"method": f"{arm} {sampler}", "arm": arm, "sampler": sampler, "T": T, "finetune_seed": 0,
                "mean_nfe": T, "eps_nll": nll, "tv_2": 0.05, "ci95": {"eps_nll": [nll - half, nll + half]},
                "sanity": {}}

    grid_ = [cell("mdlm", s, T, 4.0) for s in ("mdlm", "remdm_loop", "confidence_unmask") for T in (8, 16, 32, 64)]
    wins = [cell("dsl", s, T, 3.9) for s in ("mdlm", "remdm_loop", "confidence_unmask") for T in (8, 16, 32, 64)]
    assert training_alone_rule(grid_ + wins, "eps_nll", "tv_2", [0])["verdict"] == "holds"  # 12 of 12 better
    ties = [cell("dsl", s, T, 3.99) for s in ("mdlm", "remdm_loop", "confidence_unmask") for T in (8, 16, 32, 64)]
    assert training_alone_rule(grid_ + ties, "eps_nll", "tv_2", [0])["verdict"] == "not supported"
    losses = [cell("dsl", s, T, 4.1) for s in ("mdlm", "remdm_loop", "confidence_unmask") for T in (8, 16, 32, 64)]
    assert training_alone_rule(grid_ + losses, "eps_nll", "tv_2", [0])["verdict"] == "fails"
    for c in grid_:
        c["distinct_4"] = 0.7
    for c in wins:
        c["distinct_4"] = 0.6 if c["T"] == 8 else 0.7  # three pairs fail the distinct-4 guard
    assert training_alone_rule(grid_ + wins, "eps_nll", "tv_2", [0])["verdict"] == "fails (mode seeking)"

    def mauve_cell(arm: str, sampler: str, T: int, value: float, half: float) -> dict:
        return {"method": f"{arm} {sampler}", "arm": arm, "sampler": sampler, "T": T, "finetune_seed": 0,
                "mean_nfe": T, "mauve": value, "ci95": {"mauve": [value - half, value + half]}, "sanity": {}}

    wide = [mauve_cell("mdlm", "mdlm", 8, 0.3, 0.2), mauve_cell("mdlm", "mdlm", 16, 0.4, 0.2),
            mauve_cell("dsl", "remdm_confidence", 8, 0.32, 0.2), mauve_cell("dsl", "remdm_confidence", 16, 0.41, 0.2)]
    assert mauve_rule(wide, [0])["verdict"] == "inconclusive (no power)"
    wide[2] = mauve_cell("dsl", "remdm_confidence", 8, 0.8, 0.05)
    wide[0] = mauve_cell("mdlm", "mdlm", 8, 0.3, 0.05)
    assert mauve_rule(wide, [0])["verdict"] == "holds"


def test_claims_across_testbeds_need_every_testbed_and_name_a_missing_one():
    from dsl_scale.experiment.claims import both_bases, claims_table, on_every

    def run(**verdicts_by_key) -> dict:
        return {"verdicts": {key: {"verdict": seeds_verdict(per_seed), "per_seed": per_seed}
                             for key, per_seed in verdicts_by_key.items()}}

    yes, no = {"passed": True}, {"passed": False}
    synthetic = run(claim1_dsl={"0": yes, "1": yes}, claim4={"0": yes, "1": yes})
    base2000 = run(claim1_dsl={"0": yes, "1": no})
    text = run(claim4={"0": yes, "1": no})
    results = {"synthetic": synthetic, "synthetic_base2000": base2000, "text": text}
    assert both_bases(results, "claim1_dsl") == "holds for the 800-step base only"
    assert both_bases({**results, "synthetic_base2000": synthetic}, "claim1_dsl") == "holds"
    assert both_bases({**results, "synthetic_base2000": None}, "claim1_dsl") == (
        "no verdict (synthetic, 2,000-step base not run); synthetic, 800-step base: holds")
    # calibration must hold on both testbeds for both seeds: seed 1 fails on text
    assert on_every({t: results[t]["verdicts"]["claim4"] for t in ("synthetic", "text")}) == (
        "not supported (seeds disagree)")
    table = {(r["claim"], r["where"]): r["verdict"] for r in claims_table({**results, "text": None})}
    assert table[("calibration (vs the control)", "both testbeds")] == (
        "no verdict (text not run); synthetic, 800-step base: holds")
    assert table[("better MAUVE at low budgets (B = 8, 16)", "text")] == "no verdict (text not run)"
