"""Real runs of launchers/sample.py with batched forwards (the GPU default) on CPU fp32: 1 rank vs 2 ranks
(torchrun, gloo) and batch sizes 3 and N give the same samples as the per-sequence default (within the
tolerance stated in tests/unit/test_sampling_device.py: ≥ 99 % identical tokens; CPU fp32 gives 100 %)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.launching import read_jsonl, run
from tests.unit.test_sampling_device import write_checkpoint

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~35 s on a busy 2-core machine: three launches
N = 7


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, process_group) -> Path:
    out = tmp_path_factory.mktemp("batching") / "ckpt"
    write_checkpoint(out, "mdlm")
    return out


def draw(checkpoint: Path, out: Path, launcher: str, ranks: int, **extra) -> list[dict]:
    settings = {"checkpoint": checkpoint, "sampler": "remdm_loop", "sampler.eta": 0.1, "steps": 12,
                "num_samples": N, "seed": 4, "out": out, **extra}
    run(launcher, "sample.py", ranks, [f"{k}={v}" for k, v in settings.items()])
    return read_jsonl(out)


def identical_tokens(a: list[dict], b: list[dict]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra["tokens"], rb["tokens"])]
    return sum(x == y for x, y in pairs) / len(pairs)


def test_batched_sampling_matches_over_batch_sizes_and_ranks(checkpoint, tmp_path):
    per_sequence = draw(checkpoint, tmp_path / "default.jsonl", "python", 1, batch_size=1)
    settings = json.loads(Path(f"{tmp_path / 'default.jsonl'}.settings.json").read_text())
    assert settings["batch_invariant"] is True  # auto on CPU
    assert (settings["device"], settings["precision"]) == ("cpu", "fp32")
    assert [r["index"] for r in per_sequence] == list(range(N))
    runs = {
        "1 rank, batch N": draw(checkpoint, tmp_path / "b7.jsonl", "python", 1, batch_size=N,
                                batch_invariant="false"),
        "2 ranks, batch 3": draw(checkpoint, tmp_path / "r2b3.jsonl", "torchrun", 2, batch_size=3,
                                 batch_invariant="false"),
    }
    assert json.loads(Path(f"{tmp_path / 'r2b3.jsonl'}.settings.json").read_text())["batch_invariant"] is False
    for name, records in runs.items():
        assert [r["index"] for r in records] == list(range(N)), name
        assert identical_tokens(records, per_sequence) >= 0.99, name
