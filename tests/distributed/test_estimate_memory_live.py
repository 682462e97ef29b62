"""dsl-estimate-memory against tools/bench_memory.py's live engines: every component (parameters, gradients,
optimizer state, EMA, activations) within 10 % per rank, on each of the benchmark's layouts (DP 2 at ZeRO 0-3,
TP 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launching import env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # five 2-rank jobs, ~3 min on 2 cores
def test_the_estimate_is_within_ten_percent_of_live_engines_per_component():
    out = subprocess.run([sys.executable, str(REPO / "tools" / "bench_memory.py"), "--only", "components", "--json"],
                         env=env(), cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert {r["layout"] for r in rows} == {"dp2-zero0", "dp2-zero1", "dp2-zero2", "dp2-zero3", "tp2-zero0"}
    for row in rows:
        measured, estimated = row["components"]["measured"], row["components"]["estimate"]
        for part in ("params", "grads", "optimizer", "ema", "activations"):
            assert measured[part] > 0, (row["layout"], part)
            assert abs(measured[part] / estimated[part] - 1) <= 0.10, (row["layout"], part, measured, estimated)
