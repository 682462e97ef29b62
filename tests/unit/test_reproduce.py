"""tools/reproduce.py's parts without training: the experiment configs, the stage list, resumable stage
running (real marker files), and the report written from results files in evaluate.py's format."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from omegaconf.errors import ConfigKeyError

from dsl_scale.experiment.config import expanded_methods, load_experiment
from dsl_scale.experiment.report import write_report
from dsl_scale.experiment.stages import BudgetReached, Layout, Stage, build_stages, dependencies, run_stages

ARMS = ["mdlm", "dsl", "dsl_authors", "mdlm_2x", "corrupt"]
# rows every preregistered rule reads (PREREGISTRATION.md), in both testbeds' configs
RULE_ROWS = ["MDLM", "MDLM + ReMDM-cap", "MDLM + ReMDM-rescale", "MDLM + ReMDM-conf", "MDLM + ReMDM-loop",
             "MDLM + ReMDM-loop (T << L)", "MDLM + confidence unmasking", "DSL + MDLM sampler", "DSL + ReMDM-loop",
             "DSL + confidence remasking", "DSL + confidence unmasking", "MDLM-2x + confidence unmasking",
             "Control + confidence remasking", "AR"]


def test_configs_load_and_bad_settings_fail():
    full, synthetic, base2000 = (load_experiment(n) for n in ("full", "synthetic", "synthetic_base2000"))
    quick = load_experiment("quick", ["sample.steps=[4,8]", "seed=3"])
    for e in (full, synthetic):
        labels = [m.label for m in e.sample.methods]
        assert set(RULE_ROWS) <= set(labels) and [a.name for a in e.train.arms] == ARMS
        assert e.train.finetune_seeds == [0, 1] and e.stop_after_minutes > 0
        assert e.eval.featurizer == "ar" and set(e.eval.analyses) == {"calibration", "self_correction"}
        assert {m.sampler for m in e.sample.methods} >= {"mdlm", "remdm_cap", "remdm_rescale", "remdm_conf",
                                                         "remdm_loop", "remdm_loop_short", "confidence_unmask",
                                                         "remdm_confidence", "dsl_llada_sde", "ar"}
    assert full.data.tokenizer == "char" and {"mauve", "frechet", "gen_ppl", "kn_ppl", "entropy"} <= set(
        full.eval.metrics) and full.train.ar_seeds == [0, 1]
    assert synthetic.data.source.startswith("synthetic-hmm") and synthetic.data.seq_len == 128
    assert {"eps_nll", "hmm_tv", "entropy"} <= set(synthetic.eval.metrics)
    assert base2000.train.pretrain_steps == 2000 and synthetic.train.pretrain_steps == 800
    assert (quick.sample.steps, quick.seed, quick.train.model) == ([4, 8], 3, "micro")
    assert {"remdm_confidence", "confidence_unmask", "dsl_llada_sde", "ar"} <= {m.sampler for m in
                                                                              quick.sample.methods}
    assert "mdlm_corrupt" in [a.objective for a in quick.train.arms]
    with pytest.raises(ConfigKeyError, match="bogus"):
        load_experiment("quick", ["train.bogus=1"])
    with pytest.raises(ValueError, match="checkpoint"):
        load_experiment("quick", ["sample.methods=[{label: x, checkpoint: nope, sampler: mdlm}]"])
    with pytest.raises(ValueError, match="go together"):
        load_experiment("quick", ["sample.methods=[{label: x, checkpoint: ar, sampler: mdlm}]"])
    with pytest.raises(ValueError, match="init_from"):
        load_experiment("quick", ["train.arms=[{name: a, objective: mdlm, init_from: b}]"])
    with pytest.raises(ValueError, match="frontier"):
        load_experiment("quick", ["sample.frontier=[{method: nope, temperatures: [0.5], steps: [4]}]"])
    with pytest.raises(ValueError, match="within sample.steps"):
        load_experiment("quick", ["sample.steps=[4]"])
    with pytest.raises(ValueError, match="hmm_nll needs a synthetic-hmm"):
        load_experiment("full", ["eval.metrics=[hmm_nll]"])
    with pytest.raises(ValueError, match="sample.seeds"):
        load_experiment("quick", ["sample.seeds=[1,1]"])
    with pytest.raises(ValueError, match="eval.analyses"):
        load_experiment("quick", ["eval.analyses=[nelbo]"])
    with pytest.raises(FileNotFoundError, match="quick"):
        load_experiment("no_such_experiment")


def test_stages_train_every_arm_per_seed_and_sample_only_the_cells_each_method_names(tmp_path):
    e = load_experiment("full")
    layout = Layout(tmp_path)
    stages = build_stages(e, layout)
    by_name = {s.name: s for s in stages}
    names = [s.name for s in stages]
    assert names[:2] == ["data", "pretrain (MDLM)"]
    arm_names = ["continue MDLM", "fine-tune DSL", "fine-tune dsl_authors", "fine-tune mdlm_2x", "fine-tune corrupt"]
    assert names[2:12] == arm_names + [f"{n} (ft seed 1)" for n in arm_names]
    assert names[12:14] == ["AR baseline", "AR baseline (seed 1)"]
    for seed, suffix in ((0, ""), (1, "_ft1")):
        for arm, name in zip(ARMS, arm_names):
            command = by_name[name + ("" if seed == 0 else " (ft seed 1)")].command
            assert f"run_dir={layout.run(arm + suffix)}" in command and f"train.seed={seed}" in command
            assert f"train.steps={e.train.extra_steps}" in command
            source = layout.run("mdlm" + suffix) if arm == "mdlm_2x" else layout.run("pretrain")
            assert f"init_from={source}" in command
    assert "objective=mdlm_corrupt" in by_name["fine-tune corrupt"].command
    assert "objective.mdlm_fraction=0.0" in by_name["fine-tune dsl_authors"].command
    assert f"train.steps={e.train.ar_steps}" in by_name["AR baseline (seed 1)"].command
    cells = [n for n in names if n.startswith("sample ")]
    assert len(cells) == 165 and len([n for n in names if n.startswith("evaluate ")]) == 165
    assert "sample MDLM-2x + ReMDM-loop T=8 seed=0" not in by_name
    assert "sample MDLM-2x + ReMDM-loop T=64 seed=0" in by_name
    assert "sample AR T=64 seed=0" in by_name and "sample AR [ft 1] T=64 seed=0" not in by_name
    second = by_name["sample DSL + confidence remasking [ft 1] T=16 seed=0"].command
    assert f"checkpoint={layout.run('dsl_ft1')}" in second and "sampler=remdm_confidence" in second
    ar = by_name["sample AR T=64 seed=0"].command
    assert f"checkpoint={layout.run('ar')}" in ar and "sampler=ar" in ar
    frontier = by_name["sample DSL + confidence unmasking, τ=0.8 T=16 seed=0"].command
    assert "sampler.temperature=0.8" in frontier
    assert "sample DSL + confidence unmasking, τ=0.8 T=8 seed=0" not in by_name
    evaluate = by_name["evaluate DSL + confidence remasking T=16 seed=0"].command
    assert f"scorer={layout.run('ar')}" in evaluate and f"scorer2={layout.run('ar_seed1')}" in evaluate
    assert "kn_order=5" in evaluate and f"featurizer_path={layout.run('ar')}" in evaluate
    for run in ("mdlm", "dsl", "dsl_authors", "mdlm_2x", "corrupt", "mdlm_ft1", "dsl_ft1", "corrupt_ft1"):
        analyse = by_name[f"analyse {run}"].command
        assert f"checkpoint={layout.run(run)}" in analyse and f"out={layout.analysis(run)}" in analyse
        assert any(a.startswith("analysis_visible_snr=") for a in analyse) == run.startswith("dsl")


def test_no_ar_run_without_a_metric_or_row_that_needs_it(tmp_path):
    e = load_experiment("synthetic_base2000", ["eval.analyses=[]"])
    stages = build_stages(e, Layout(tmp_path))
    names = [s.name for s in stages]
    assert not any(n.startswith("AR baseline") for n in names) and not any(n.startswith("analyse") for n in names)
    assert not any("featurizer_path" in a or a.startswith("scorer=") for s in stages for a in s.command)


def test_a_time_budget_stops_before_a_stage_and_the_rerun_continues(tmp_path):
    layout, calls = Layout(tmp_path), []
    stages = [Stage(name, [name], action=lambda name=name: (calls.append(name), time.sleep(0.05)))
              for name in ("a", "b", "c")]
    with pytest.raises(BudgetReached, match="run the same command again"):
        run_stages(stages, layout, echo=False, budget_s=0.01)
    assert calls == ["a"]
    run_stages(stages, layout, echo=False)
    assert calls == ["a", "b", "c"]


def test_finished_stages_are_skipped_and_changed_ones_refused(tmp_path, capsys):
    layout = Layout(tmp_path)
    calls = []

    def stages(setting: str) -> list[Stage]:
        return [Stage("first", ["a", "x=1"], action=lambda: calls.append("first")),
                Stage("second", ["b", setting], action=lambda: calls.append("second"))]

    run_stages(stages("y=1"), layout, echo=False)
    assert calls == ["first", "second"]
    (layout.markers / "001_second.json").unlink()  # as if interrupted during the second stage
    records = run_stages(stages("y=1"), layout, echo=False)
    assert calls == ["first", "second", "second"] and [r["skipped"] for r in records] == [True, False]
    assert "done before" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other settings"):
        run_stages(stages("y=2"), layout, echo=False)
    assert calls == ["first", "second", "second"]


def test_an_extended_grid_reuses_finished_stages_wherever_they_stood(tmp_path):
    layout, calls = Layout(tmp_path), []

    def stage(name: str) -> Stage:
        return Stage(name, [name], action=lambda: calls.append(name))

    run_stages([stage("data"), stage("cell T=8"), stage("cell T=32")], layout, echo=False)
    records = run_stages([stage("data"), stage("cell T=8"), stage("cell T=16"), stage("cell T=32")], layout,
                         echo=False)
    assert calls == ["data", "cell T=8", "cell T=32", "cell T=16"]
    assert [r["skipped"] for r in records] == [True, True, False, True]
    assert sorted(p.name for p in layout.markers.iterdir()) == ["000_data.json", "001_cell_t_8.json",
                                                                 "002_cell_t_16.json", "003_cell_t_32.json"]


def fake_result(e, layout, method, steps, seed, mauve: float, sane: bool = True) -> None:
    """A results file as launchers/evaluate.py writes it (only the fields the report reads)."""
    path = layout.results(method, steps, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    real, shuffled = {"mauve": {"mauve": 0.9, "ci95": [0.85, 0.95]}}, {"mauve": {"mauve": 0.1, "ci95": [0.05, 0.15]}}
    path.write_text(json.dumps({
        "mean_nfe": steps - 0.5, "count": e.sample.num_samples, "T": steps,
        "mauve": {"mauve": mauve, "ci95": [mauve - 0.01 * (seed + 1), mauve + 0.01 * (seed + 1)]},
        "gen_ppl": {"gen_ppl": 10.0 + steps}, "entropy": {"entropy": 2.5},
        "sanity": {"real": real, "shuffled": shuffled, "checks": {"mauve": {"passed": sane}}}}))


REPORT_METHODS = ("sample.methods=[{label: MDLM, checkpoint: mdlm, sampler: mdlm}, "
                  "{label: MDLM + ReMDM-loop, checkpoint: mdlm, sampler: remdm_loop}, "
                  "{label: DSL + ReMDM-loop, checkpoint: dsl, sampler: remdm_loop}, "
                  "{label: DSL + confidence remasking, checkpoint: dsl, sampler: remdm_confidence, steps: [8]}]")


def test_report_averages_seeds_with_sanity_rows_analyses_and_plot(tmp_path):
    e = load_experiment("full", ["eval.metrics=[mauve,gen_ppl,entropy]", "sample.seeds=[0,1]", "sample.steps=[4,8]",
                                 "sample.num_samples=16", REPORT_METHODS, "sample.frontier=[]",
                                 "train.arms=[{name: mdlm, objective: mdlm}, {name: dsl, objective: dsl}]",
                                 "train.finetune_seeds=[0,1]", "train.ar_seeds=[0]"])
    layout = Layout(tmp_path)
    methods = expanded_methods(e)
    assert [m.label for m in methods][4:6] == ["MDLM [ft 1]", "MDLM + ReMDM-loop [ft 1]"]
    for i, method in enumerate(methods):
        for steps in method.steps:
            for seed in (0, 1):  # the two seeds differ by ±0.02: the mean is the first seed's value + 0.01
                fake_result(e, layout, method, steps, seed, mauve=0.1 * i + steps / 100 + 0.02 * seed)
    run = layout.run("pretrain")
    run.mkdir(parents=True)
    (run / "eval.jsonl").write_text('{"step": 0, "val_loss": 3.3}\n{"step": 20, "val_loss": 2.75}\n')
    (run / "metrics.jsonl").write_text('{"step": 20, "tokens_per_s": 100.0}\n')
    for arm, ece in (("mdlm", 0.25), ("dsl", 0.05), ("dsl_ft1", 0.06)):
        layout.analysis(arm).write_text(json.dumps({
            "calibration": {"visible": {"ece": ece, "mean_confidence": 0.9, "accuracy": 0.8},
                            "masked": {"ece": 0.1, "mean_confidence": 0.5, "accuracy": 0.4},
                            "settings": {"binning": "equal-mass"}},
            "self_correction": {"repaired": 0.3, "repaired_ci95": [0.2, 0.4], "broken": 0.01,
                                "broken_ci95": [0.0, 0.02], "rate": 0.1}}))
    results = write_report(e, layout, stages=[], wall_s=90.0)
    md = (tmp_path / "results.md").read_text()
    assert "| method | T=4 | T=8 |" in md
    assert "| *held-out real text* | 0.900 [0.850, 0.950] | 0.900 [0.850, 0.950] |" in md
    # third method at T=4: seeds 0.24 and 0.26 → 0.25; interval: the envelope [0.24 − 0.01, 0.26 + 0.02]; NFE 3.5
    assert "| DSL + ReMDM-loop | 0.250 [0.230, 0.280] · 3.5 | 0.290 [0.270, 0.320] · 7.5 |" in md
    assert "| DSL + confidence remasking | – | 0.390 [0.370, 0.420] · 7.5 |" in md  # only at T=8
    assert "| DSL + ReMDM-loop [ft 1] | 0.650 [0.630, 0.680] · 3.5 |" in md
    assert "| MDLM | 8 | 7.5 | 0.090 | 18.0 | 2.500 | 16 |" in md
    assert "- MDLM: not reached\n- MDLM + ReMDM-loop: 7.5\n- DSL + ReMDM-loop: 3.5\n" in md
    assert "| mdlm | 0.250 | 0.100 | 0.900 / 0.800 | 0.500 / 0.400 | 0.300 [0.200, 0.400] |" in md
    assert "| dsl | 0.050 |" in md and "| dsl_ft1 | 0.060 |" in md
    assert "| MDLM pretraining | 20 | 2.750 | 100 |" in md and "seeds [0, 1] averaged" in md
    assert len(results["rows"]) == 14 and results["rows"][0]["seeds"] == [0, 1]
    assert results["rows"][-1]["finetune_seed"] == 1 and results["rows"][-1]["checkpoint"] == "dsl_ft1"
    assert set(results["analyses"]) == {"mdlm", "dsl", "dsl_ft1"}
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results["rows"]
    assert (tmp_path / "quality_vs_nfe.png").stat().st_size > 1000
    assert (tmp_path / "quality_vs_nfe_mauve.png").stat().st_size > 1000

    fake_result(e, layout, methods[1], 8, 1, mauve=0.5, sane=False)
    md = (write_report(e, layout, stages=[], wall_s=0.0, plot=False), (tmp_path / "results.md").read_text())[1]
    assert "**sanity failed** (e.g. MDLM + ReMDM-loop T=8" in md and "| DSL + ReMDM-loop | 0.250" not in md
    assert "Fewest mean NFE" not in md and "| method | T=4 | T=8 |" not in md.split("## gen-PPL")[0]
    layout.results(methods[0], 4, 1).unlink()
    with pytest.raises(FileNotFoundError, match="seed=1 has not run"):
        write_report(e, layout, stages=[], wall_s=0.0)


def test_two_workers_overlap_independent_launchers_and_order_dependent_ones(tmp_path, monkeypatch):
    import dsl_scale.experiment.stages as stages_module

    layout, spans = Layout(tmp_path), {}

    def fake_launch(command, ranks, log, echo, workers):  # the subprocess stands in for a launcher
        name = command[1]
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.4)"], check=True)
        spans[name] = (t0, time.time())
        if name == "bad":
            raise RuntimeError("stage command failed")

    monkeypatch.setattr(stages_module, "run_command", fake_launch)
    monkeypatch.setattr(stages_module, "launcher_command", lambda stage: ["python", stage.name])
    out = {n: str(tmp_path / n) for n in ("a", "b", "c")}
    stages = [Stage("a", ["a.py", "x=1"], output=out["a"]), Stage("b", ["b.py", "y=2"], output=out["b"]),
              Stage("c", ["c.py", f"checkpoint={out['a']}/step_1"], output=out["c"])]
    assert dependencies(stages) == [set(), set(), {0}]
    records = run_stages(stages, layout, echo=False, workers=2)
    assert [r["name"] for r in records] == ["a", "b", "c"]
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1]  # a and b overlapped
    assert spans["c"][0] >= spans["a"][1]  # c read a's output: it waited
    # a failure starts nothing more, lets the running stage finish, and raises
    failing = [Stage("bad", ["bad.py"], output=str(tmp_path / "bad")),
               Stage("ok", ["ok.py"], output=str(tmp_path / "ok")),
               Stage("after", ["z.py", f"in={tmp_path / 'bad'}"], output=str(tmp_path / "after"))]
    with pytest.raises(RuntimeError, match="failed"):
        run_stages(failing, Layout(tmp_path / "f"), echo=False, workers=2)
    assert "ok" in spans and "after" not in spans


def test_the_wall_time_counts_stages_that_ran_at_once_once():
    from dsl_scale.experiment.stages import stage_span

    records = [{"finished": "2026-12-07 06:00:10", "seconds": 10}, {"finished": "2026-12-07 06:00:15", "seconds": 10},
               {"finished": "2026-12-07 06:01:00", "seconds": 5}]
    assert stage_span(records) == 60 and stage_span([]) == 0
