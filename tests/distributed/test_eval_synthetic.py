"""The synthetic-hmm testbed end to end: shards from `data.source=synthetic-hmm…`, micro AR and MDLM runs on
them, then launchers/evaluate.py with the exact likelihood, in-domain AR features with intervals, sanity
rows, and the paper's analyses (calibration, self-correction) of the MDLM checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsl_scale.data.synthetic_hmm import hmm_from_source
from dsl_scale.tokenizer import get_tokenizer
from tests.launching import run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SOURCE = "synthetic-hmm-states16-symbols8-n2000"  # 100 val blocks: 40 references + 40 sanity rows
TOKENIZER = "synthetic-8"


def train(kind: str, root: Path, steps: int) -> Path:
    """The trainer prepares data.path from data.source itself (rank 0), like any other source."""
    run("python", "pretrain.py", 1, [
        "model=micro", "model.seq_len=32", f"objective={kind}", f"data.source={SOURCE}", f"data.tokenizer={TOKENIZER}",
        f"data.path={root / 'data'}", f"run_dir={root / kind}", f"train.steps={steps}", "train.global_batch=32",
        "train.micro_batch=32", "optim.lr=3e-3", f"train.eval_every={steps}", f"train.save_every={steps}",
        "train.eval_examples=16", "train.ema=0", "model.dropout=0.0"], timeout=600)
    return root / kind


@pytest.fixture(scope="module")
def testbed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hmm")
    train("ar", root, 60)
    train("mdlm", root, 60)
    return root


def write_samples(path: Path, rows: np.ndarray) -> Path:
    tok = get_tokenizer(TOKENIZER)
    blocks = [[tok.bos_id, *map(int, r), tok.eos_id] for r in rows]
    path.write_text("".join(json.dumps({"index": i, "tokens": b, "text": tok.decode(b), "nfe": 8}) + "\n"
                            for i, b in enumerate(blocks)))
    return path


def evaluate(out: Path, *overrides: str) -> dict:
    run("python", "evaluate.py", 1, [*overrides, f"out={out}"], timeout=600)
    return json.loads(out.read_text())


def test_exact_likelihood_intervals_and_sanity_rows(testbed, tmp_path):
    hmm = hmm_from_source(SOURCE)
    fresh = write_samples(tmp_path / "fresh.jsonl", hmm.sample(range(5000, 5040), 30))  # unseen source draws
    rng = np.random.default_rng(0)
    scrambled = write_samples(tmp_path / "scrambled.jsonl",
                              np.stack([rng.permutation(r) for r in hmm.sample(range(6000, 6040), 30)]))
    common = [f"reference={testbed / 'data'}", "metrics=[hmm_nll,frechet,gen_ppl,entropy]", "featurizer=ar",
              f"featurizer_path={testbed / 'ar'}", f"scorer={testbed / 'ar'}", "cache_dir=", "bootstrap_resamples=200"]
    good = evaluate(tmp_path / "fresh.json", f"samples={fresh}", *common)
    bad = evaluate(tmp_path / "scrambled.json", f"samples={scrambled}", *common)
    lower, upper = hmm.entropy_bounds(30)
    assert lower < good["hmm_nll"]["nll_per_token"] < upper + 0.1 and good["hmm_nll"]["invalid"] == 0
    assert bad["hmm_nll"]["nll_per_token"] > good["hmm_nll"]["nll_per_token"] + 0.5
    lo, hi = good["frechet"]["ci95"]
    assert lo <= good["frechet"]["frechet"] <= hi and good["featurizer"] == "ar"
    checks = good["sanity"]["checks"]
    assert set(checks) == {"hmm_nll", "frechet", "gen_ppl"}
    assert checks["hmm_nll"]["passed"] and checks["gen_ppl"]["passed"]  # real ≫ shuffled under the source
    assert good["sanity"]["real"]["hmm_nll"]["nll_per_token"] < good["sanity"]["shuffled"]["hmm_nll"]["nll_per_token"]


def test_calibration_and_self_correction_of_a_checkpoint(testbed, tmp_path):
    r = evaluate(tmp_path / "analysis.json", "metrics=[calibration,self_correction]", f"checkpoint={testbed / 'mdlm'}",
                 f"reference={testbed / 'data'}", "analysis_examples=24", "analysis_batch_size=8",
                 "corruption_rate=0.2")
    calibration, repair = r["calibration"], r["self_correction"]
    assert calibration["visible"]["count"] + calibration["masked"]["count"] == 24 * 32
    for where in ("visible", "masked"):
        assert 0 <= calibration[where]["ece"] <= 1 and 0 <= calibration[where]["accuracy"] <= 1
    assert calibration["settings"]["binning"] == "equal-mass" and calibration["objective"] == "mdlm"
    assert 0 <= repair["repaired"] <= 1 and repair["rate"] == 0.2 and repair["blocks"] == 24
    assert repair["repaired_ci95"][0] <= repair["repaired"] <= repair["repaired_ci95"][1]
