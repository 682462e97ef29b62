"""A micro model trains on data prepared by `prepare_data --source hf:<a dataset saved to disk>` with
`--tokenizer hf:<a tokenizer.json>` (both made here, no network)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dsl_scale.cli import prepare_data
from tests.conftest import make_documents
from tests.launching import micro_run, read_jsonl, run
from tests.unit.test_hf_data import make_tokenizer_json

datasets = pytest.importorskip("datasets")


def test_a_micro_model_trains_on_an_hf_dataset_with_an_hf_tokenizer(tmp_path: Path, capsys):
    docs = make_documents(300)
    saved = tmp_path / "dataset"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(saved)
    tokenizer = f"hf:{make_tokenizer_json(tmp_path / 'tokenizer.json', docs)}"
    data = tmp_path / "shards"
    assert prepare_data.main(["--source", f"hf:{saved}:train", "--out", str(data), "--seq-len", "64",
                              "--tokenizer", tokenizer]) == 0  # the command's main(), in this process
    assert "tokenizer: added [MASK]" in capsys.readouterr().out

    run_dir = tmp_path / "run"
    run("python", "pretrain.py", 1, micro_run(data, run_dir, 6, **{"data.tokenizer": tokenizer}))
    losses = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
