"""tools/gpu_smoke.sh --cpu: every step of the GPU smoke run (data, AR scorer, training killed with SIGKILL and
resumed, sampling, evaluation, Hugging Face export and reload, throughput figures) runs on the CPU and reports."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.launching import REPO, env


@pytest.mark.distributed
@pytest.mark.slow  # ~50-75 s: every step of tools/gpu_smoke.sh; the pieces have their own default tests
def test_gpu_smoke_script_runs_every_step_on_cpu(tmp_path):
    work = tmp_path / "smoke"
    result = subprocess.run(["bash", str(REPO / "tools" / "gpu_smoke.sh"), "--cpu", "--workdir", str(work)],
                            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert re.search(r"killed \(SIGKILL\) with the checkpoint of step (\d+) saved", out), out
    assert re.search(r"resumed at step \d+ and trained to 12", out), out
    assert re.search(r"evaluate: gen_ppl [0-9.e+]+ \(under the AR scorer\), entropy [0-9.]+", out), out
    diff = float(re.search(r"max \|ours - hf\| = ([0-9.e+-]+)", out).group(1))
    assert diff <= 1e-4
    figures = re.search(r"figures: ([0-9,]+) tokens/s .* fp32 matmul peak ([0-9.]+) TFLOP/s .* MFU ([0-9.]+) %", out)
    assert figures and float(figures.group(1).replace(",", "")) > 0 and 0 < float(figures.group(3)) < 100, out
    assert "all steps passed" in out

    # what the script's checks rest on, read back from its outputs
    metrics = [json.loads(line) for line in (work / "mdlm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == list(range(1, 13))  # steps after the checkpoint dropped, then redone
    assert len((work / "samples.jsonl").read_text().splitlines()) == 4
    assert (work / "hf" / "model.safetensors").exists()


def test_gpu_smoke_script_rejects_unknown_arguments():
    result = subprocess.run(["bash", str(REPO / "tools" / "gpu_smoke.sh"), "--gpus", "3"], env=env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --gpus" in result.stderr
