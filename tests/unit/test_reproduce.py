"""tools/reproduce.py's parts without training: the experiment configs, the stage list, resumable stage
running (real marker files), and the report written from results files in evaluate.py's format."""

from __future__ import annotations

import json

import pytest
from omegaconf.errors import ConfigKeyError

from dsl_scale.experiment.config import load_experiment
from dsl_scale.experiment.report import write_report
from dsl_scale.experiment.stages import Layout, Stage, build_stages, run_stages

METHODS = ["MDLM", "MDLM + ReMDM-loop", "DSL + ReMDM-loop", "DSL + confidence remasking",
           "DSL + confidence remasking, SNR 5", "MDLM + confidence remasking", "DSL hybrid"]


def test_configs_load_and_bad_settings_fail():
    full, synthetic = load_experiment("full"), load_experiment("synthetic")
    quick = load_experiment("quick", ["sample.steps=[4,6]", "seed=3"])
    for e in (full, synthetic):
        assert [m.label for m in e.sample.methods] == METHODS and len(e.sample.seeds) >= 2
        assert e.eval.featurizer == "ar" and set(e.eval.analyses) == {"calibration", "self_correction"}
    assert full.data.tokenizer == "char" and {"mauve", "frechet", "gen_ppl", "entropy"} <= set(full.eval.metrics)
    assert synthetic.data.source.startswith("synthetic-hmm") and synthetic.data.seq_len == 128
    assert {"hmm_nll", "entropy"} <= set(synthetic.eval.metrics)
    assert (quick.sample.steps, quick.seed, quick.train.model) == ([4, 6], 3, "micro")
    assert quick.data.source.startswith("synthetic-hmm") and "remdm_confidence" in [m.sampler for m in
                                                                                   quick.sample.methods]
    with pytest.raises(ConfigKeyError, match="bogus"):
        load_experiment("quick", ["train.bogus=1"])
    with pytest.raises(ValueError, match="checkpoint"):
        load_experiment("quick", ["sample.methods=[{label: x, checkpoint: nope, sampler: mdlm}]"])
    with pytest.raises(ValueError, match="hmm_nll needs a synthetic-hmm"):
        load_experiment("full", ["eval.metrics=[hmm_nll]"])
    with pytest.raises(ValueError, match="sample.seeds"):
        load_experiment("quick", ["sample.seeds=[1,1]"])
    with pytest.raises(ValueError, match="eval.analyses"):
        load_experiment("quick", ["eval.analyses=[nelbo]"])
    with pytest.raises(FileNotFoundError, match="quick"):
        load_experiment("no_such_experiment")


def test_stages_give_both_arms_the_same_steps_and_pair_samples_with_evaluations(tmp_path):
    e = load_experiment("full", ["sample.steps=[4,16]", "sample.seeds=[0,5]"])
    layout = Layout(tmp_path)
    stages = build_stages(e, layout)
    names = [s.name for s in stages]
    assert names[:5] == ["data", "pretrain (MDLM)", "continue MDLM", "fine-tune DSL", "AR baseline"]
    assert names[-2:] == ["analyse mdlm", "analyse dsl"]
    assert len(stages) == 5 + 2 * len(e.sample.methods) * 2 * 2 + 2
    by_name = {s.name: s for s in stages}
    mdlm, dsl = by_name["continue MDLM"].command, by_name["fine-tune DSL"].command
    for arm in (mdlm, dsl):
        assert f"train.steps={e.train.extra_steps}" in arm and f"init_from={layout.run('pretrain')}" in arm
    assert "objective=mdlm" in mdlm and "objective=dsl" in dsl
    assert "objective=ar" in by_name["AR baseline"].command
    for steps in (4, 16):
        hybrid = by_name[f"sample DSL hybrid T={steps} seed=0"].command
        continuous = int(next(a for a in hybrid if a.startswith("sampler.continuous_steps=")).split("=")[1])
        assert 1 <= continuous < steps and f"checkpoint={layout.run('dsl')}" in hybrid
        confidence = by_name[f"sample DSL + confidence remasking T={steps} seed=5"].command
        assert "sampler=remdm_confidence" in confidence and not any("visible_snr" in a for a in confidence)
        through_converter = by_name[f"sample DSL + confidence remasking, SNR 5 T={steps} seed=5"].command
        assert "sampler.visible_snr=5.0" in through_converter and f"checkpoint={layout.run('dsl')}" in through_converter
        control = by_name[f"sample MDLM + confidence remasking T={steps} seed=5"].command
        assert "sampler=remdm_confidence" in control and f"checkpoint={layout.run('mdlm')}" in control
        for method in e.sample.methods:
            for seed in (0, 5):
                out = layout.samples(method, steps, seed)
                sample = by_name[f"sample {method.label} T={steps} seed={seed}"].command
                assert f"out={out}" in sample and f"seed={seed}" in sample
                evaluate = by_name[f"evaluate {method.label} T={steps} seed={seed}"].command
                assert f"samples={out}" in evaluate and f"scorer={layout.run('ar')}" in evaluate
                assert f"featurizer_path={layout.run('ar')}" in evaluate
                assert f"out={layout.results(method, steps, seed)}" in evaluate
                assert layout.results(method, steps, seed).name.endswith(f"_T{steps}_seed{seed}.json")
    for arm in ("mdlm", "dsl"):
        analyse = by_name[f"analyse {arm}"].command
        assert "metrics=[calibration,self_correction]" in analyse and f"checkpoint={layout.run(arm)}" in analyse
        assert f"out={layout.analysis(arm)}" in analyse
        assert any(a.startswith("analysis_visible_snr=") for a in analyse) == (arm == "dsl")


def test_no_ar_run_without_a_metric_that_needs_it(tmp_path):
    e = load_experiment("synthetic", ["eval.metrics=[hmm_nll,entropy]", "eval.analyses=[]"])
    stages = build_stages(e, Layout(tmp_path))
    names = [s.name for s in stages]
    assert "AR baseline" not in names and not any(n.startswith("analyse") for n in names)
    assert not any("featurizer_path" in a or a.startswith("scorer=") for s in stages for a in s.command)


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


def test_report_averages_seeds_with_sanity_rows_analyses_and_plot(tmp_path):
    e = load_experiment("full", ["eval.metrics=[mauve,gen_ppl,entropy]", "sample.seeds=[0,1]", "sample.steps=[4,8]",
                                 "sample.num_samples=16"])
    layout = Layout(tmp_path)
    for i, method in enumerate(e.sample.methods):
        for steps in e.sample.steps:
            for seed in (0, 1):  # the two seeds differ by ±0.02: the mean is the first seed's value + 0.01
                fake_result(e, layout, method, steps, seed, mauve=0.1 * i + steps / 100 + 0.02 * seed)
    run = layout.run("pretrain")
    run.mkdir(parents=True)
    (run / "eval.jsonl").write_text('{"step": 0, "val_loss": 3.3}\n{"step": 20, "val_loss": 2.75}\n')
    (run / "metrics.jsonl").write_text('{"step": 20, "tokens_per_s": 100.0}\n')
    for arm, ece in (("mdlm", 0.25), ("dsl", 0.05)):
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
    # third method at T=4: seeds 0.24 and 0.26 → 0.25; interval: the envelope [0.24 − 0.01, 0.26 + 0.02]
    assert "| DSL + ReMDM-loop | 0.250 [0.230, 0.280] | 0.290 [0.270, 0.320] |" in md
    assert "| MDLM | 8 | 7.5 | 0.090 | 18.0 | 2.500 | 16 |" in md
    # MDLM + ReMDM-loop reaches 0.190 at T=8; the later methods (0.25 and up at T=4) already at NFE 3.5
    assert ("- MDLM: not reached\n- MDLM + ReMDM-loop: 7.5\n- DSL + ReMDM-loop: 3.5\n"
            "- DSL + confidence remasking: 3.5\n- DSL + confidence remasking, SNR 5: 3.5\n"
            "- MDLM + confidence remasking: 3.5\n- DSL hybrid: 3.5") in md
    assert "| mdlm | 0.250 | 0.100 | 0.900 / 0.800 | 0.500 / 0.400 | 0.300 [0.200, 0.400] |" in md
    assert "| dsl | 0.050 |" in md
    assert "| MDLM pretraining | 20 | 2.750 | 100 |" in md and "seeds [0, 1] averaged" in md
    assert len(results["rows"]) == 14 and results["rows"][0]["seeds"] == [0, 1]
    assert set(results["analyses"]) == {"mdlm", "dsl"}
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results["rows"]
    assert (tmp_path / "quality_vs_nfe.png").stat().st_size > 1000

    fake_result(e, layout, e.sample.methods[1], 8, 1, mauve=0.5, sane=False)
    md = (write_report(e, layout, stages=[], wall_s=0.0, plot=False), (tmp_path / "results.md").read_text())[1]
    assert "**sanity failed** (e.g. MDLM + ReMDM-loop T=8" in md and "| DSL + ReMDM-loop | 0.250" not in md
    assert "Fewest mean NFE" not in md and "| method | T=4 | T=8 |" not in md.split("## gen-PPL")[0]
    layout.results(e.sample.methods[0], 4, 1).unlink()
    with pytest.raises(FileNotFoundError, match="seed=1 has not run"):
        write_report(e, layout, stages=[], wall_s=0.0)
