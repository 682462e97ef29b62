"""tools/bench_all.py over a folder of stand-in benchmarks: one that works, one that fails, one without JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCHES = {
    "bench_good": 'import sys\nprint("size  seconds")\nprint("4     0.5")\nassert sys.argv[1:] == ["--json"]\n'
                  'print(\'{"rows": [{"size": 4, "seconds": 0.5}]}\')\n',
    "bench_bad": 'print("starting")\nraise SystemExit("broken on purpose")\n',
    "bench_nojson": 'print("a table but no JSON line")\n',
}


def test_every_benchmark_is_run_and_reported(tmp_path):
    bench_all = load_tool("bench_all")
    tools = tmp_path / "tools"
    tools.mkdir()
    for name, code in BENCHES.items():
        (tools / f"{name}.py").write_text(code)
    status = bench_all.main(["--out", str(tmp_path / "report"), "--tools-dir", str(tools)])
    assert status == 1  # failures make the suite fail
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    by_name = {b["name"]: b for b in report["benchmarks"]}
    assert list(by_name) == ["bench_bad", "bench_good", "bench_nojson"]
    assert by_name["bench_good"]["status"] == "ok"
    assert by_name["bench_good"]["result"]["rows"] == [{"size": 4, "seconds": 0.5}]
    assert by_name["bench_bad"]["status"] == "failed" and "broken on purpose" in by_name["bench_bad"]["error"]
    assert by_name["bench_nojson"]["status"] == "failed" and "not a" in by_name["bench_nojson"]["error"]
    assert report["missing"] == list(bench_all.EXPECTED)  # none of the real ones is in this folder
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| bench_good | ok |" in md and "4     0.5" in md and "| bench_train | missing" in md


def test_only_runs_the_named_benchmarks(tmp_path):
    bench_all = load_tool("bench_all")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "bench_good.py").write_text(BENCHES["bench_good"])
    (tools / "bench_bad.py").write_text(BENCHES["bench_bad"])
    assert bench_all.main(["--out", str(tmp_path / "r"), "--tools-dir", str(tools), "--only", "bench_good"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [b["name"] for b in report["benchmarks"]] == ["bench_good"] and report["missing"] == []
