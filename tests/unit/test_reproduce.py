"""tools/reproduce.py's parts without training: the experiment config, the stage list, resumable stage
running (real marker files), and the report written from results files in evaluate.py's format."""

from __future__ import annotations

import json

import pytest
from omegaconf.errors import ConfigKeyError

from dsl_scale.experiment.config import load_experiment
from dsl_scale.experiment.report import write_report
from dsl_scale.experiment.stages import Layout, Stage, build_stages, run_stages


def test_configs_load_and_unknown_keys_fail():
    full, quick = load_experiment("full"), load_experiment("quick", ["sample.steps=[4,6]", "seed=3"])
    assert full.data.tokenizer == "char" and full.sample.num_samples >= 200
    assert (quick.sample.steps, quick.seed, quick.train.model) == ([4, 6], 3, "micro")
    with pytest.raises(ConfigKeyError, match="bogus"):
        load_experiment("quick", ["train.bogus=1"])
    with pytest.raises(ValueError, match="checkpoint"):
        load_experiment("quick", ["sample.methods=[{label: x, checkpoint: nope, sampler: mdlm}]"])
    with pytest.raises(FileNotFoundError, match="quick"):
        load_experiment("no_such_experiment")


def test_stages_give_both_arms_the_same_steps_and_pair_samples_with_evaluations(tmp_path):
    e = load_experiment("quick", ["sample.steps=[4,16]"])
    layout = Layout(tmp_path)
    stages = build_stages(e, layout)
    names = [s.name for s in stages]
    assert names[:5] == ["data", "pretrain (MDLM)", "continue MDLM", "fine-tune DSL", "AR baseline"]
    assert len(stages) == 5 + 2 * len(e.sample.methods) * 2
    by_name = {s.name: s for s in stages}
    mdlm, dsl = by_name["continue MDLM"].command, by_name["fine-tune DSL"].command
    for arm in (mdlm, dsl):
        assert f"train.steps={e.train.extra_steps}" in arm and f"init_from={layout.run('pretrain')}" in arm
    assert "objective=mdlm" in mdlm and "objective=dsl" in dsl
    assert "objective=ar" in by_name["AR baseline"].command
    for steps in (4, 16):
        hybrid = by_name[f"sample DSL hybrid T={steps}"].command
        continuous = int(next(a for a in hybrid if a.startswith("sampler.continuous_steps=")).split("=")[1])
        assert 1 <= continuous < steps and f"checkpoint={layout.run('dsl')}" in hybrid
        for method in e.sample.methods:
            out = layout.samples(method, steps)
            assert f"out={out}" in by_name[f"sample {method.label} T={steps}"].command
            evaluate = by_name[f"evaluate {method.label} T={steps}"].command
            assert f"samples={out}" in evaluate and f"scorer={layout.run('ar')}" in evaluate


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


def fake_result(e, layout, method, steps, mauve: float) -> None:
    """A results file as launchers/evaluate.py writes it (only the fields the report reads)."""
    path = layout.results(method, steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mean_nfe": steps - 0.5, "count": e.sample.num_samples, "T": steps,
                                "mauve": {"mauve": mauve}, "gen_ppl": {"gen_ppl": 10.0 + steps},
                                "entropy": {"entropy": 2.5}}))


def test_report_tables_and_plot(tmp_path):
    e = load_experiment("quick")
    layout = Layout(tmp_path)
    for i, method in enumerate(e.sample.methods):
        for steps in e.sample.steps:
            fake_result(e, layout, method, steps, mauve=0.1 * i + steps / 100)
    run = layout.run("pretrain")
    run.mkdir(parents=True)
    (run / "eval.jsonl").write_text('{"step": 0, "val_loss": 3.3}\n{"step": 20, "val_loss": 2.75}\n')
    (run / "metrics.jsonl").write_text('{"step": 20, "tokens_per_s": 100.0}\n')
    results = write_report(e, layout, stages=[], wall_s=90.0)
    md = (tmp_path / "results.md").read_text()
    assert "| method | T=4 | T=8 |" in md
    assert "| DSL + ReMDM-loop | 0.240 | 0.280 |" in md  # third method: 0.2 + T/100
    assert "| MDLM | 8 | 7.5 | 0.080 | 18.0 | 2.500 | 20 |" in md
    # MDLM + ReMDM-loop reaches 0.180 at T=8; the DSL methods (0.24, 0.34 at T=4) already at NFE 3.5
    assert "- MDLM: not reached\n- MDLM + ReMDM-loop: 7.5\n- DSL + ReMDM-loop: 3.5\n- DSL hybrid: 3.5" in md
    assert "| MDLM pretraining | 20 | 2.750 | 100 |" in md and "tokenizer `char`" in md
    assert len(results["rows"]) == 8 and results["tokenizer"] == "char"
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results["rows"]
    assert (tmp_path / "mauve_vs_nfe.png").stat().st_size > 1000
    fake = layout.results(e.sample.methods[0], 4)
    fake.unlink()
    with pytest.raises(FileNotFoundError, match="has not run"):
        write_report(e, layout, stages=[], wall_s=0.0)
