"""A micro model trains on data prepared by `prepare_data --source hf:<a dataset saved to disk>` with
`--tokenizer hf:<a tokenizer.json>` (both made here, no network)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_documents
from tests.launching import REPO, env, micro_run, read_jsonl, run
from tests.unit.test_hf_data import make_tokenizer_json

datasets = pytest.importorskip("datasets")


def test_a_micro_model_trains_on_an_hf_dataset_with_an_hf_tokenizer(tmp_path: Path):
    docs = make_documents(300)
    saved = tmp_path / "dataset"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(saved)
    tokenizer = f"hf:{make_tokenizer_json(tmp_path / 'tokenizer.json', docs)}"
    data = tmp_path / "shards"
    prepared = subprocess.run([sys.executable, str(REPO / "tools" / "prepare_data.py"), "--source", f"hf:{saved}:train",
                               "--out", str(data), "--seq-len", "64", "--tokenizer", tokenizer],
                              env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert "tokenizer: added [MASK]" in prepared.stdout

    run_dir = tmp_path / "run"
    run("python", "pretrain.py", 1, micro_run(data, run_dir, 6, **{"data.tokenizer": tokenizer}))
    losses = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
