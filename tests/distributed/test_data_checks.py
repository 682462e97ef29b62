"""Start-up data checks in a real 2-rank gloo job on one node: each shard file is examined by one of the node's
ranks, and a fault one rank finds stops every rank with the same error."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.launching import run

pytestmark = pytest.mark.distributed
SCRIPT = "tests/distributed/data_checks_check.py"


def test_ranks_share_the_shard_checks_and_agree_on_a_fault(tiny_shards, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    shutil.copytree(tiny_shards, whole)
    shutil.copytree(tiny_shards, broken)
    manifest = json.loads((whole / "manifest.json").read_text())
    files = [s["file"] for split in ("train", "val") for s in manifest["shards"]["mds"][split]]
    missing = str(broken / files[1])  # in rank 1's share (the second file of the train split)
    os.remove(missing)
    run("torchrun", SCRIPT, 2, ["--data", str(whole), "--data", str(broken), "--out", str(tmp_path / "out")])
    reports = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]

    assert [r[0]["error"] for r in reports] == [None, None]
    examined = [r[0]["examined"] for r in reports]
    assert not set(examined[0]) & set(examined[1])
    assert sorted(examined[0] + examined[1]) == sorted(str(whole / f) for f in files)

    assert all(r[1]["error"][0] == "FileNotFoundError" and missing in r[1]["error"][1] for r in reports)
    assert "found by rank 1" in reports[0][1]["error"][1] and "found by rank" not in reports[1][1]["error"][1]
