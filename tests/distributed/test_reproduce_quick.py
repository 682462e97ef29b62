"""tools/reproduce.py --quick end to end: data, four training runs, sampling and evaluation of every
(method, T) cell through the real launchers, then the report; a second run finds every stage done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launching import REPO, env

# In the default suite: issue 11 asks CI to run the quick reproduction (~2-3 min on 2 cores).
pytestmark = pytest.mark.distributed


def reproduce(out: Path, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(REPO / "tools" / "reproduce.py"), "--quick", "--out", str(out)],
                          env=env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def test_quick_reproduction_completes_and_resumes(tmp_path):
    out = tmp_path / "quick"
    first = reproduce(out, timeout=1800)
    results = json.loads((out / "results.json").read_text())
    methods = ["MDLM", "MDLM + ReMDM-loop", "DSL + ReMDM-loop", "DSL hybrid"]
    assert [(r["method"], r["T"]) for r in results["rows"]] == [(m, t) for m in methods for t in (4, 8)]
    for row in results["rows"]:
        assert row["count"] == 20 and 0 < row["mauve"] <= 1 and row["gen_ppl"] > 1 and row["entropy"] > 0
        assert row["mean_nfe"] > 0
        evaluated = json.loads(Path(row["results_file"]).read_text())
        assert evaluated["tokenizer"] == "char" and evaluated["gen_ppl"]["scorer"]["kind"] == "dsl_scale-ar"
    assert results["runs"]["dsl"]["steps"] == results["runs"]["mdlm"]["steps"] == 6
    assert "| method | T=4 | T=8 |" in (out / "results.md").read_text() and "| method | T=4 | T=8 |" in first.stdout
    assert (out / "mauve_vs_nfe.png").stat().st_size > 1000
    sample = json.loads((out / "samples" / "mdlm_T4.jsonl").read_text().splitlines()[0])
    assert set(sample["text"].replace("<|endoftext|>", "")) <= set(" abcdefghijklmnopqrstuvwxyz")

    again = reproduce(out, timeout=300)
    assert again.stdout.count("skipped") == len(list((out / "stages").glob("*.json"))) == 21
