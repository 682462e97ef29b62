"""Start-up is one decision, rank 0's: a rank whose view of `latest` is stale still loads rank 0's tag; a resume
with a changed config is refused naming the keys that break exact resume, and goes on when only harmless keys
changed."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from dsl_scale.checkpoint import layout
from dsl_scale.checkpoint.consolidated import write_consolidated
from dsl_scale.checkpoint.manager import Checkpointer
from dsl_scale.checkpoint.readers import TensorSource
from dsl_scale.core.files import atomic_directory
from tests.distributed.startup_check import micro_config
from tests.launching import run

pytestmark = pytest.mark.distributed


def write_tags(process_group, run_dir, cfg, steps=(2, 4)) -> dict[int, float]:
    """Layout-free tags of a micro model (different weights per step); `latest` names the last. Returns each
    tag's parameter checksum."""
    from dsl_scale.model.factory import build_dit

    sums = {}
    for step in steps:
        model = build_dit(cfg.model, 50258, seed=step)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)
                   and not k.endswith("_extra_state")}
        sums[step] = sum(float(p.detach().double().sum()) for p in model.parameters())
        tag = run_dir / "checkpoints" / layout.tag_for(step)
        with atomic_directory(tag) as out:
            write_consolidated(TensorSource({"model": weights}, dataclasses.asdict(cfg), step=step), out)
        (tag / layout.META).write_text(json.dumps({"step": step, "format": "layout_free", "tp": 1, "pp": 1}))
    (run_dir / "checkpoints" / layout.LATEST).write_text(layout.tag_for(steps[-1]))
    return sums


def test_a_rank_with_a_stale_latest_loads_rank_zeros_tag(process_group, wiki_shards, tmp_path):
    run_dir = tmp_path / "run"
    sums = write_tags(process_group, run_dir, micro_config(str(wiki_shards), str(run_dir)))
    stale = tmp_path / "run-rank1" / "checkpoints"  # rank 1's view: the same tags, `latest` one save behind
    stale.mkdir(parents=True)
    for step in sums:
        os.symlink(run_dir / "checkpoints" / layout.tag_for(step), stale / layout.tag_for(step))
    (stale / layout.LATEST).write_text(layout.tag_for(2))
    result = run("torchrun", "tests/distributed/startup_check.py", 2,
                 ["--data", str(wiki_shards), "--run-dir", str(run_dir), "--steps", "5", "--out", str(tmp_path)])
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in records:
        assert record["tag"] == layout.tag_for(4) and record["step"] == 4, records
        assert record["checksum"] == pytest.approx(sums[4], rel=1e-6), (records, sums)
        assert record["final_step"] == 5
    assert "config changed since the checkpoint: train.steps: 4 → 5" in result.stdout
    assert (run_dir / "config.0.yaml").is_file() and not (run_dir / "config.1.yaml").exists()


def test_resume_refuses_a_changed_global_batch_and_allows_changed_steps(process_group, tmp_path):
    run_dir = tmp_path / "run"
    cfg = micro_config("data/x", str(run_dir))
    write_tags(process_group, run_dir, cfg, steps=(4,))
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, global_batch=8, seed=3))
    with pytest.raises(ValueError, match=r"train\.global_batch: 4 → 8; train\.seed: 0 → 3\. These break exact"):
        Checkpointer(run_dir, None, 0, 1).start(changed)
    assert not (run_dir / "config.yaml").exists()  # a refused start keeps nothing
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=40, log_every=5))
    decision = Checkpointer(run_dir, None, 0, 1).start(longer)
    assert decision.tag == layout.tag_for(4)
    assert decision.notes == ["config changed since the checkpoint: train.log_every: 1 → 5",
                              "config changed since the checkpoint: train.steps: 4 → 40"]
    forced = dataclasses.replace(changed, train=dataclasses.replace(changed.train, allow_config_change=True))
    assert Checkpointer(run_dir, None, 0, 1).start(forced).tag == layout.tag_for(4)
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.0.yaml", "config.1.yaml", "config.yaml"]
    assert "global_batch: 8" in (run_dir / "config.yaml").read_text()
    assert "global_batch: 4" in (run_dir / "config.0.yaml").read_text()


def test_the_corpus_is_prepared_once_on_first_use(tiny_corpus, tmp_path):
    from dsl_scale.config import DataConfig
    from dsl_scale.data.ensure import ensure_corpus

    data = DataConfig(path=str(tmp_path / "corpus-L32"), source=str(tiny_corpus[0]))
    lines = []
    assert ensure_corpus(data, 32, rank=0, log=lines.append)
    assert (tmp_path / "corpus-L32" / "manifest.json").is_file() and "preparing it from" in lines[0]
    assert not ensure_corpus(data, 32, rank=0, log=lines.append) and len(lines) == 1  # there: left alone
    assert not ensure_corpus(DataConfig(path=str(tmp_path / "none"), source=""), 32, rank=0)
    assert not (tmp_path / "none").exists()
