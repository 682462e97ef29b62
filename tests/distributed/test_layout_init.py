"""Start-up in O(model / (TP · PP)) per rank, with initial weights that do not depend on the layout."""

from __future__ import annotations

import re

import pytest

from tests.launching import run

pytestmark = pytest.mark.distributed


def test_tp2_pp2_ranks_build_only_their_shards_and_equal_the_single_rank_network():
    result = run("torchrun", "tests/distributed/layout_init_check.py", 4, [])
    lines = re.findall(r"rank (\d) \(stage (\d), tp rank (\d)\): (\d+) shards equal", result.stdout)
    assert sorted(int(rank) for rank, *_ in lines) == [0, 1, 2, 3], result.stdout
    assert {(stage, tp) for _, stage, tp, _ in lines} == {("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")}
    assert all(int(count) >= 9 for *_, count in lines), result.stdout  # 4 weights × 2 blocks + embedding or output
