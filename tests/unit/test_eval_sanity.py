"""Sanity rows: held-out real text disjoint from the references, shuffled within each sequence; the rules;
and the report printing "sanity failed" instead of a table whose rows do not separate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsl_scale.data.loader import open_shards
from dsl_scale.data.prepare import prepare
from dsl_scale.evaluation.inputs import reference_indices
from dsl_scale.evaluation.sanity import check, sanity_indices, sanity_tokens, summarise
from dsl_scale.experiment.config import load_experiment
from dsl_scale.experiment.report import write_report
from dsl_scale.experiment.stages import Layout


def test_real_rows_avoid_the_references_and_shuffled_rows_permute_them(tmp_path):
    source = "synthetic-hmm-states8-symbols6-seed1-n400"
    prepare(source, str(tmp_path), 12, val_fraction=0.1, tokenizer="synthetic-6", progress=False)
    val = open_shards(str(tmp_path), "val")
    assert not set(sanity_indices(len(val), 20)) & set(reference_indices(len(val), 20))
    with pytest.raises(ValueError, match="sanity=false"):
        sanity_indices(len(val), 21)
    rows = sanity_tokens(str(tmp_path), "val", [12] * 19 + [8], seed=0)
    assert rows["real"][0] == np.asarray(val[sanity_indices(40, 20)[0]]).tolist() and len(rows["real"][-1]) == 8
    for real, shuffled in zip(rows["real"], rows["shuffled"]):
        assert shuffled[0] == real[0] and shuffled[-1] == real[-1] and sorted(shuffled) == sorted(real)
    assert sum(r != s for r, s in zip(rows["real"], rows["shuffled"])) >= 15


def test_rules():
    assert check("mauve", {"mauve": 0.9, "ci95": [0.8, 0.95]}, {"mauve": 0.1, "ci95": [0.05, 0.2]})["passed"]
    assert not check("mauve", {"mauve": 0.45, "ci95": [0.4, 0.5]}, {"mauve": 0.1, "ci95": [0.05, 0.2]})["passed"]
    assert not check("mauve", {"mauve": 0.9, "ci95": [0.7, 0.95]}, {"mauve": 0.6, "ci95": [0.5, 0.75]})["passed"]
    assert check("frechet", {"frechet": 1.0, "ci95": [0.8, 1.2]}, {"frechet": 3.0, "ci95": [2.5, 3.5]})["passed"]
    bounds = {"source_entropy_bounds": {"upper": 2.0}}
    real = {"nll_per_token": 2.05, "ci95": [2.0, 2.1], **bounds}
    assert check("hmm_nll", real, {"nll_per_token": 3.0, "ci95": [2.9, 3.1]})["passed"]
    assert not check("hmm_nll", {**real, "nll_per_token": 2.2, "ci95": [2.15, 2.25]},
                     {"nll_per_token": 3.0, "ci95": [2.9, 3.1]})["passed"]  # above the source's entropy
    summary = summarise({"real": {"gen_ppl": {"gen_ppl": 4.0}}, "shuffled": {"gen_ppl": {"gen_ppl": 3.0}}})
    assert summary["passed"] is False and summary["checks"]["gen_ppl"]["passed"] is False


def test_report_hides_a_table_whose_sanity_failed(tmp_path):
    methods = ("sample.methods=[{label: MDLM, checkpoint: mdlm, sampler: mdlm}, "
               "{label: MDLM + ReMDM-loop, checkpoint: mdlm, sampler: remdm_loop}, "
               "{label: DSL + ReMDM-loop, checkpoint: dsl, sampler: remdm_loop}]")
    e = load_experiment("full", ["sample.steps=[4,8]", "sample.seeds=[0,1]", "eval.metrics=[mauve,gen_ppl,entropy]",
                                 methods, "sample.frontier=[]", "train.finetune_seeds=[0]"])
    layout = Layout(tmp_path)
    for i, method in enumerate(e.sample.methods):
        for steps in e.sample.steps:
            path = layout.results(method, steps, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            sanity = {"real": {"mauve": {"mauve": 0.3}, "gen_ppl": {"gen_ppl": 4.0}},
                      "shuffled": {"mauve": {"mauve": 0.2}, "gen_ppl": {"gen_ppl": 9.0}}}
            sanity = summarise(sanity)
            result = {"mean_nfe": steps, "count": 20, "T": steps, "mauve": {"mauve": 0.1 + i / 10},
                      "gen_ppl": {"gen_ppl": 5.0 + i}, "entropy": {"entropy": 2.5}, "sanity": sanity}
            path.write_text(json.dumps(result))
            # the second sampling seed: the first method's differs (averaged, intervals enveloped)
            seed = {**result, "gen_ppl": {"gen_ppl": 7.0, "ci95": [6.0, 8.0]}} if i == 0 else result
            layout.results(method, steps, 1).write_text(json.dumps(seed))
    write_report(e, layout, stages=[], wall_s=1.0, plot=False)
    md = (tmp_path / "results.md").read_text()
    assert "## MAUVE (higher is better) by number of steps T\n\n**sanity failed**" in md
    assert "held-out real text 0.300, shuffled real text 0.200" in md
    assert "Fewest mean NFE" not in md  # the step-efficiency line reads MAUVE: not reported either
    assert "| *held-out real text* | 4.0 | 4.0 |" in md and "| *shuffled real text* | 9.0 | 9.0 |" in md
    assert "| DSL + ReMDM-loop | 7.0 · 4.0 | 7.0 · 8.0 |" in md  # value · mean NFE
    assert "| MDLM | 6.0 · 4.0 | 6.0 · 8.0 |" in md  # mean of 5.0 and 7.0; no interval as one seed has none
