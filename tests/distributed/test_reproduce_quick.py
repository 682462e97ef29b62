"""tools/reproduce.py --quick end to end on the synthetic-hmm testbed: data, five training runs (pretraining,
MDLM continued, DSL, the discrete-corruption control, AR), sampling and evaluation (exact and ε-smoothed NLL,
bigram / trigram TV, the Kneser–Ney scorer, Fréchet distance on the AR run's features, sanity rows, in-sampler
self-correction) of every (method, T) cell through the real launchers: confidence remasking, confidence-ordered
unmasking, DSL-LLaDA's SDE settings and the AR sampler; the analyses of every arm, then the report; a second run
finds every stage done; a cell run by its launcher alone matches the one the cell workers ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsl_scale.experiment.config import load_experiment
from tests.launching import REPO, env

# In the default suite: CI runs the quick reproduction (~3.5 min on 2 cores).
pytestmark = pytest.mark.distributed

CELLS = [("MDLM", 4), ("DSL + confidence remasking", 4), ("DSL + confidence remasking", 8),
         ("MDLM + confidence unmasking", 8), ("Control + confidence remasking", 8), ("DSL + DSL-LLaDA SDE", 4),
         ("AR", 8)]


def reproduce(out: Path, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(REPO / "tools" / "reproduce.py"), "--quick", "--out", str(out)],
                          env=env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def test_quick_reproduction_completes_and_resumes(tmp_path):
    source = load_experiment("quick").data.source
    out = tmp_path / "quick"
    first = reproduce(out, timeout=1800)
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["T"]) for r in results["rows"]] == CELLS
    for row in results["rows"]:
        assert row["count"] == 16 and row["mean_nfe"] > 0 and row["entropy"] >= 0 and (row["hmm_nll"] or 1) > 0
        assert row["eps_nll"] > 0 and 0 <= row["tv_2"] <= 1 and row["kn_ppl"] > 1 and 0 < row["distinct_4"] <= 1
        assert row["sanity"]["eps_nll"] is not None and row["ci95"]["eps_nll"] is not None
        evaluated = json.loads(Path(row["results_files"][0]).read_text())
        assert evaluated["hmm_nll"]["source"] == source and evaluated["frechet"]["featurizer"]["name"] == "ar"
        assert set(evaluated["sanity"]["checks"]) == {"frechet", "hmm_nll", "eps_nll", "hmm_tv", "kn_ppl"}
        assert evaluated["remask_correction"]["remasks"] == sum(len(r) for r in _remasks(evaluated["samples"]))
    nfe = {r["method"]: r["mean_nfe"] for r in results["rows"]}
    assert nfe["AR"] == 31 and nfe["DSL + DSL-LLaDA SDE"] == 8 and nfe["MDLM + confidence unmasking"] <= 8
    assert {results["runs"][arm]["steps"] for arm in ("mdlm", "dsl", "corrupt")} == {6}
    md = (out / "results.md").read_text()
    nll = md.split("## Exact NLL per symbol")[1].split("\n## ")[0]
    if "sanity failed" not in nll:  # the source's own text scores its entropy rate, shuffled text far worse
        assert "| method | T=4 | T=8 |" in nll
        assert "| *held-out real text* |" in nll and "| *shuffled real text* |" in nll
        assert all(f"\n| {m} | " in nll for m, _ in CELLS)
    assert "## Fréchet" in md and "## Bigram TV" in md and "## distinct-4" in md
    for arm in ("mdlm", "dsl", "corrupt"):
        analysis = results["analyses"][arm]
        assert 0 <= analysis["calibration"]["visible"]["ece"] <= 1 and 0 <= analysis["self_correction"]["repaired"] <= 1
        assert f"\n| {arm} | " in md.split("## The paper's analyses")[1]
    assert "\n| DSL + confidence remasking | 4 |" in md and "invalid (NLL)" in md and "Exact NLL" in first.stdout
    assert (out / "quality_vs_nfe.png").stat().st_size > 1000
    sample = json.loads((out / "samples" / "dsl_confidence_remasking_T4_seed0.jsonl").read_text().splitlines()[0])
    assert len(sample["tokens"]) == 32 and "remasks" in sample

    again = reproduce(out, timeout=300)
    assert again.stdout.count("skipped") == len(list((out / "stages").glob("*.json"))) == 23

    # the quick config runs its cells in long-lived workers (in_process): the launcher, run on its own, writes
    # the same samples
    marker = next((out / "stages").glob("*_sample_dsl_confidence_remasking_t_4_seed_0.json"))
    command = json.loads(marker.read_text())["command"]
    alone = tmp_path / "alone.jsonl"
    args = [a if not a.startswith("out=") else f"out={alone}" for a in command[1:]]
    done = subprocess.run([sys.executable, str(REPO / "launchers" / command[0]), *args], env=env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert alone.read_text() == (out / "samples" / "dsl_confidence_remasking_T4_seed0.jsonl").read_text()


def _remasks(samples: str) -> list[list]:
    return [json.loads(line).get("remasks", []) for line in Path(samples).read_text().splitlines() if line.strip()]
