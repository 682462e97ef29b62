"""The trainer's data path in real gloo processes (torchrun): DP split, TP agreement, kill and resume."""

from __future__ import annotations

import itertools
import subprocess

import numpy as np
import pytest

from dsl_scale.data.loader import GlobalBatches, epoch_permutation, open_shards
from dsl_scale.data.wds_reader import WdsSplit
from tests.launching import command, env, read_jsonl, run

pytestmark = pytest.mark.distributed
SCRIPT = "tests/distributed/data_ranks_check.py"
GB, STREAMS = 8, 4


def _dump(ranks, out, data, *extra, launcher="torchrun"):
    run(launcher, SCRIPT, ranks, ["--data", str(data), "--out", str(out), *extra])


def _global(out, fmt, ranks) -> dict[int, np.ndarray]:
    """step -> the global batch: the DP ranks' slices in DP order (rows of TP rank 0)."""
    per_step: dict[int, dict[int, list]] = {}
    for r in range(ranks):
        for rec in read_jsonl(out / f"{fmt}-rank{r}.jsonl"):
            if rec["tp_rank"] == 0:
                per_step.setdefault(rec["step"], {})[rec["dp_rank"]] = rec["tokens"]
    return {s: np.array(list(itertools.chain(*(d[k] for k in sorted(d))))) for s, d in sorted(per_step.items())}


def _keys(rows) -> list[bytes]:
    return [np.asarray(r, dtype=np.int32).tobytes() for r in rows]


def _steps(blocks) -> int:
    return -(-len(blocks) // GB) + 2  # a little over one epoch


def test_data_parallel_split_and_tensor_parallel_agreement(both_shards, tmp_path):
    blocks = open_shards(str(both_shards), "train")
    n, steps = len(blocks), _steps(blocks)
    dp2, tp2 = tmp_path / "dp2", tmp_path / "tp2"
    common = ["--formats", "mds,wds", "--steps", f"0:{steps}", "--streams", str(STREAMS)]
    _dump(2, dp2, both_shards, *common, "--workers", "2")
    _dump(2, tp2, both_shards, *common, "--tp", "2", "--workers", "1")

    for fmt in ("mds", "wds"):
        reference = _global(dp2, fmt, 2)
        assert list(reference) == list(range(steps)) and reference[0].shape == (GB, 32)
        tp_records = [read_jsonl(tp2 / f"{fmt}-rank{r}.jsonl") for r in range(2)]
        assert [r["tp_rank"] for r in tp_records[1]] == [1] * steps
        assert [r["tokens"] for r in tp_records[0]] == [r["tokens"] for r in tp_records[1]]  # TP ranks agree
        assert all(np.array_equal(np.array(rec["tokens"]), reference[rec["step"]]) for rec in tp_records[0])

    # MDS: the 2 DP ranks' first epoch (global positions 0..n-1) is the dataset, each block once.
    stream = [row for s in range(steps) for row in _global(dp2, "mds", 2)[s]]
    assert sorted(_keys(stream[:n])) == sorted(_keys(blocks[i] for i in range(n)))
    rank_rows = [[row for rec in read_jsonl(dp2 / f"mds-rank{r}.jsonl") for row in rec["tokens"]] for r in range(2)]
    assert not set(_keys(rank_rows[0][: n // 2 - GB])) & set(_keys(rank_rows[1][: n // 2 - GB]))

    # webdataset: stream s is rows [s*m, (s+1)*m) of each global batch; over each stream's first epoch
    # the streams together read every block once (what the README promises for this format).
    split, m = WdsSplit(str(both_shards), "train"), GB // STREAMS
    wds = _global(dp2, "wds", 2)
    first_epoch = []
    for s in range(STREAMS):
        size = sum(split.shards[i].samples for i in epoch_permutation(11, 0, len(split.shards))[s::STREAMS])
        rows = [row for k in range(steps) for row in wds[k][s * m : (s + 1) * m]]
        assert len(rows) >= size, "run long enough for every stream to finish its first epoch"
        first_epoch += rows[:size]
    assert sorted(_keys(first_epoch)) == sorted(_keys(blocks[i] for i in range(n)))



def test_mds_kill_and_resume_at_the_same_and_a_smaller_world(both_shards, tmp_path):
    """Kill both ranks at step 7, resume there at 2 ranks and at 1 rank: the same stream as uninterrupted."""
    blocks = open_shards(str(both_shards), "train")
    steps = _steps(blocks)
    uninterrupted = GlobalBatches(blocks, GB, 0, 1, seed=11)  # = any DP size's (tests/unit/test_loader.py)
    reference = {s: uninterrupted.batch_at(s).numpy() for s in range(steps)}
    killed, kill_at = tmp_path / "killed", 7
    result = subprocess.run(command("torchrun", SCRIPT, 2, ["--data", str(both_shards), "--out", str(killed),
                                                             "--steps", f"0:{steps}", "--kill-at", str(kill_at)]),
                            env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    before = _global(killed, "mds", 2)
    assert 0 < len(before) <= kill_at
    assert all(np.array_equal(before[s], reference[s]) for s in before if len(before[s]) == GB)
    resumed2, resumed1 = tmp_path / "resumed2", tmp_path / "resumed1"
    _dump(2, resumed2, both_shards, "--steps", f"{kill_at}:{steps}", "--workers", "1")
    _dump(1, resumed1, both_shards, "--steps", f"{kill_at}:{steps}", "--workers", "1", launcher="python")
    for out, ranks in ((resumed2, 2), (resumed1, 1)):
        again = _global(out, "mds", ranks)
        assert list(again) == list(range(kill_at, steps))
        assert all(np.array_equal(again[s], reference[s]) for s in again), out.name


@pytest.mark.slow
def test_trainer_reads_webdataset_with_workers(both_shards, tmp_path):
    """launchers/pretrain.py end to end on webdataset shards, with a data-loader worker and validation."""
    overrides = {"model": "micro", "model.seq_len": 32, "data.path": both_shards, "data.format": "wds",
                 "data.workers": 1, "data.streams": STREAMS, "run_dir": tmp_path / "run", "train.steps": 3,
                 "train.global_batch": GB, "train.micro_batch": 4, "train.eval_every": 3, "train.eval_examples": 8,
                 "train.save_every": 3, "train.log_every": 1}
    run("python", "pretrain.py", 1, [f"{k}={v}" for k, v in overrides.items()])
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "eval.jsonl")] == [0, 3]
