"""Run every benchmark (tools/bench_*.py) with --json and write one report (Markdown + JSON).

    python tools/bench_all.py [--out reports/bench] [--quick] [--only bench_train,bench_sampler] [--timeout 3600]

Each benchmark runs as its own process, one after the other (they measure the whole machine). Its table
(stdout) goes into report.md, its last-line JSON into report.json. A benchmark that fails or times out is
reported as such with its output's tail, and the others still run; an expected benchmark that is not in
tools/ (yet) is listed as missing. --quick passes each known benchmark smaller settings (minutes, not hours):
a smoke test of the suite, not figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
EXPECTED = ("bench_train", "bench_memory", "bench_sampler", "bench_data", "bench_convert")
QUICK_ARGS = {
    "bench_train": ["--shapes", "tiny:128:4", "--steps", "1", "--mm-size", "1024"],
    "bench_sampler": ["--steps", "16", "--samplers", "mdlm,remdm_loop"],
    "bench_data": ["--epochs", "0.2", "--workers", "0", "--train-repeats", "1", "--train-batch", "tiny:4,small:1"],
}


def discover(tools: Path, only: list[str] | None = None) -> list[str]:
    """Benchmark names (file stems) in `tools`, sorted; this script excluded."""
    names = sorted(p.stem for p in tools.glob("bench_*.py") if p.stem != "bench_all")
    if only:
        unknown = [n for n in only if n not in names and n not in EXPECTED]
        if unknown:
            raise ValueError(f"--only {unknown}: no such benchmark in {tools} (found: {', '.join(names)})")
        names = [n for n in names if n in only]
    return names


def run_bench(tools: Path, name: str, args: list[str], timeout: float) -> dict:
    """One benchmark's status, wall time, printed table and parsed JSON (rows)."""
    command = [sys.executable, str(tools / f"{name}.py"), "--json", *args]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    started = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=tools.parent)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return {"name": name, "status": "timeout", "seconds": time.time() - started, "command": command,
                "table": out, "error": f"no result within {timeout:.0f} s"}
    record = {"name": name, "command": command, "seconds": time.time() - started}
    lines = done.stdout.rstrip().splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if done.returncode != 0 or not isinstance(result, dict) or "rows" not in result:
        why = f"exit code {done.returncode}" if done.returncode else "its last line is not a {\"rows\": ...} JSON"
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        return {**record, "status": "failed", "table": "\n".join(lines), "error": f"{why}\n{tail}"}
    return {**record, "status": "ok", "table": "\n".join(lines[:-1]), "result": result}


def markdown(records: list[dict], missing: list[str], header: dict) -> str:
    lines = ["# Benchmark report", "", f"{header['date']} on {header['machine']} ({header['cpus']} CPUs), "
             f"python {header['python']}{', quick settings' if header['quick'] else ''}. Timings on a shared "
             "machine are noisy.", "", "| benchmark | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} |" for r in records]
    lines += [f"| {name} | missing (not in tools/) | – |" for name in missing]
    for r in records:
        shown = " ".join(["python", f"tools/{r['name']}.py", *r["command"][2:]])
        lines += ["", f"## {r['name']}", "", f"`{shown}`", "", "```", r["table"].rstrip() or "(no output)", "```"]
        if r["status"] != "ok":
            lines += ["", f"**{r['status']}**: ", "```", r["error"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/bench", help="directory for report.md and report.json")
    parser.add_argument("--quick", action="store_true", help="smaller settings for the known benchmarks")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    parser.add_argument("--tools-dir", default=str(TOOLS), help=argparse.SUPPRESS)  # tests point it elsewhere
    args = parser.parse_args(argv)
    tools = Path(args.tools_dir)
    only = [n for n in args.only.split(",") if n]
    names = discover(tools, only)
    missing = [n for n in EXPECTED if n not in names and (not only or n in only)]
    records = []
    for name in names:
        print(f"[bench_all] {name} ...", flush=True)
        record = run_bench(tools, name, QUICK_ARGS.get(name, []) if args.quick else [], args.timeout)
        print(f"[bench_all] {name}: {record['status']} ({record['seconds']:.0f} s)\n{record['table']}", flush=True)
        records.append(record)
    header = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "quick": args.quick}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(records, missing, header))
    (out / "report.json").write_text(json.dumps({**header, "benchmarks": records, "missing": missing}, indent=2))
    failed = [r["name"] for r in records if r["status"] != "ok"]
    problems = "".join(f", {what}: {', '.join(names)}" for what, names in (("failed", failed), ("missing", missing))
                       if names)
    print(f"[bench_all] wrote {out / 'report.md'} and report.json: {len(records) - len(failed)} ok{problems}")
    print(json.dumps({"rows": [{"name": r["name"], "status": r["status"], "seconds": r["seconds"]}
                               for r in records], "missing": missing}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
