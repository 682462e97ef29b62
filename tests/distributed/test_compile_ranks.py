"""`model.compile` at TP2: every rank compiles the same graphs (megatron's deprecation warning, issued on rank 0
only, used to break rank 0's graphs alone: 49 graphs against rank 1's 29, and the recompile limit), over 12 blocks
and three batch sizes, without a recompile-limit hit (it raises in the check script)."""

from __future__ import annotations

import json

import pytest

from tests.launching import run

# ~70 s, so slow; the TP1 graph-break and recompile budget (test_compile_graphs.py) stays in the default suite
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_every_tp_rank_compiles_the_same_graphs():
    result = run("torchrun", "tests/distributed/compile_ranks_check.py", 2, [], timeout=600)
    ranks = sorted((json.loads(line.removeprefix("GRAPHS ")) for line in result.stdout.splitlines()
                    if line.startswith("GRAPHS ")), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1], result.stdout[-2000:]
    assert ranks[0]["graphs"] == ranks[1]["graphs"] and ranks[0]["breaks"] == ranks[1]["breaks"], ranks
    assert not any("warn" in reason for r in ranks for reason in r["reasons"]), ranks
