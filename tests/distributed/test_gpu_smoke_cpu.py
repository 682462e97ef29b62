"""tools/gpu_smoke.sh --cpu: every step of the GPU smoke run (data, AR scorer, training killed with SIGKILL and
resumed, sampling, evaluation, Hugging Face export and reload, throughput figures, ZeRO-1, ZeRO-3 with DSL, a DSL
fine-tune, the `small` step's figures, the bf16 sampling step against fp32) runs on the CPU, writes summary.json
and copies its logs to --out; --from reruns from a step."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.launching import REPO, env


@pytest.mark.distributed
@pytest.mark.slow  # ~3-8 min: every step of tools/gpu_smoke.sh; the pieces have their own default tests
def test_gpu_smoke_script_runs_every_step_on_cpu(tmp_path):
    work = tmp_path / "smoke"
    out_dir = tmp_path / "out"
    result = subprocess.run(["bash", str(REPO / "tools" / "gpu_smoke.sh"), "--cpu", "--workdir", str(work),
                             "--out", str(out_dir)], cwd=tmp_path, env=env(), capture_output=True, text=True,
                            timeout=1800)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert re.search(r"killed \(SIGKILL\) with the checkpoint of step (\d+) saved", out), out
    assert re.search(r"resumed at step \d+ and trained to 12", out), out
    assert re.search(r"evaluate: gen_ppl [0-9.e+]+ \(under the AR scorer\), entropy [0-9.]+", out), out
    diff = float(re.search(r"max \|ours - hf\| = ([0-9.e+-]+)", out).group(1))
    assert diff <= 1e-4
    figures = re.search(r"figures \(train\): ([0-9,]+) tokens/s .* fp32 matmul peak ([0-9.]+) TFLOP/s .* MFU "
                        r"([0-9.]+) %", out)
    assert figures and float(figures.group(1).replace(",", "")) > 0 and 0 < float(figures.group(3)) < 100, out
    for name in ("zero1", "zero3", "finetune"):
        assert re.search(rf"{name}: 3 steps, val_loss [0-9.]+", out), (name, out[-3000:])
    assert "figures (small_compile_false):" in out
    error = float(re.search(r"bf16 sampling step: RMS\(bf16 - fp32\) / RMS\(fp32\) = ([0-9.e+-]+)", out).group(1))
    assert 0 < error <= 0.05
    assert "all steps passed" in out

    summary = json.loads((out_dir / "summary.json").read_text())
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert summary["passed"] and statuses.pop("multi") == "skipped" and set(statuses.values()) == {"passed"}
    assert set(statuses) == {"install", "data", "scorer", "train", "sample", "evaluate", "export", "figures",
                             "zero1", "zero3", "finetune", "small", "bf16"}
    assert {"train", "small_compile_false", "bf16_logits"} <= set(summary["figures"])
    assert summary["versions"]["torch"] and summary["versions"]["deepspeed"]
    assert all((out_dir / s["log"]).exists() for s in summary["steps"] if s["status"] == "passed"
               and s["step"] != "install"), sorted(p.name for p in out_dir.iterdir())

    # --from: the steps before it are kept as they were, the rest run again on the same work directory
    again = subprocess.run(["bash", str(REPO / "tools" / "gpu_smoke.sh"), "--cpu", "--workdir", str(work),
                            "--from", "bf16"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "bf16 sampling step" in again.stdout and "zero1:" not in again.stdout
    rerun = json.loads((work / "summary.json").read_text())
    assert [s["step"] for s in rerun["steps"]][:-2] == [s["step"] for s in summary["steps"]][:-2]

    # what the script's checks rest on, read back from its outputs
    metrics = [json.loads(line) for line in (work / "mdlm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == list(range(1, 13))  # steps after the checkpoint dropped, then redone
    assert len((work / "samples.jsonl").read_text().splitlines()) == 4
    assert (work / "hf" / "model.safetensors").exists()


def test_gpu_smoke_script_rejects_unknown_arguments_and_steps():
    result = subprocess.run(["bash", str(REPO / "tools" / "gpu_smoke.sh"), "--gpus", "3"], env=env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --gpus" in result.stderr
    result = subprocess.run(["bash", str(REPO / "tools" / "gpu_smoke.sh"), "--cpu", "--from", "trian"], env=env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--from trian is not a step" in result.stderr
