"""The command line: a bad key or value fails in seconds, before torch is imported, as one line; --check and
--cfg job validate; each command's own --help; --json output parses; summaries name the objective's loss."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from dsl_scale.checkpoint import layout
from tests.launching import BIN, REPO, env


def cli(*args: str, extra_env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    environment = {k: v for k, v in {**env(), **(extra_env or {})}.items() if v is not None}  # None: unset
    result = subprocess.run([str(BIN / args[0]), *args[1:]], env=environment, cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    return result, time.perf_counter() - started


def test_a_bad_value_fails_fast_in_one_line_naming_the_key_and_choices():
    result, seconds = cli("dsl-pretrain", "train.precision=bf61")
    assert result.returncode == 2 and seconds <= 5, (result, seconds)
    assert result.stderr.strip() == ("dsl-pretrain: error: train.precision='bf61' is not one of "
                                     "('auto', 'fp32', 'bf16')")
    assert result.stdout == ""
    result, _ = cli("dsl-pretrain", "train.precision=bf61", extra_env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr
    result, _ = cli("dsl-finetune", "train.nonsense=1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "train.nonsense" in result.stderr and "TrainConfig" in result.stderr


def test_the_check_runs_before_torch_is_imported():
    code = ("import sys\nfrom dsl_scale.cli import pretrain\nsys.argv = ['dsl-pretrain', 'parallel.tp=3']\n"
            "try:\n    pretrain.main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env(), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.split() == ["2", "False"], result
    assert "parallel.tp=3" in result.stderr


def test_cfg_job_and_check_validate():
    result, _ = cli("dsl-pretrain", "parallel.zero_stage=5", "--cfg", "job")
    assert result.returncode == 2 and "parallel.zero_stage=5" in result.stderr and result.stdout == ""
    result, _ = cli("dsl-pretrain", "model=micro", "--cfg", "job")
    assert result.returncode == 0 and "name: micro" in result.stdout
    result, _ = cli("dsl-sample", "steps=0", "--check")
    assert result.returncode == 2 and "steps and batch_size must be >= 1" in result.stderr
    result, _ = cli("dsl-sample", "--check")
    assert result.returncode == 0 and "config OK" in result.stderr


def test_each_command_has_its_own_help():
    result, _ = cli("dsl-sample", "--help")
    assert result.returncode == 0 and result.stdout.startswith("dsl-sample: Sample from a trained checkpoint")
    assert "sampler " in result.stdout and "objective" not in result.stdout and "Hydra" in result.stdout
    assert "powered by Hydra" not in result.stdout
    result, _ = cli("dsl-finetune", "--help")
    assert "from_checkpoint" in result.stdout and "sampler" not in result.stdout and "cluster" not in result.stdout
    assert "  train.precision = 'auto'  # " in result.stdout and "one of auto, fp32, bf16" in result.stdout


def test_inspect_json_parses_although_deepspeed_warns(tmp_path):
    tag = tmp_path / "checkpoints" / layout.tag_for(7)  # a ZeRO-0 tag: reading it imports DeepSpeed
    tag.mkdir(parents=True)
    torch.save({"module": {"vocab_embed.weight": torch.ones(4, 2)}, "global_steps": 7, "config": {},
                "optimizer": None}, tag / layout.model_states_name(0))
    (tag / layout.META).write_text(json.dumps({"step": 7, "tp": 1, "pp": 1, "dp": 1}))
    (tmp_path / "checkpoints" / layout.LATEST).write_text(tag.name)
    # without DS_ACCELERATOR DeepSpeed prints a notice when it is imported
    result, _ = cli("dsl-inspect-checkpoint", str(tmp_path), "--json", extra_env={"DS_ACCELERATOR": None})
    assert result.returncode == 0, result
    info = json.loads(result.stdout)
    assert info["format"] == "deepspeed" and info["step"] == 7 and info["parameters"] == 8


def test_summaries_name_the_objectives_loss(tmp_path, capsys):
    from dsl_scale.cli.summarize_run import summarize

    for objective, title in (("mdlm", "NELBO"), ("dsl", "DSL loss"), ("ar", "next-token NLL")):
        run = tmp_path / objective
        run.mkdir()
        (run / "config.yaml").write_text(f"objective:\n  name: {objective}\n")
        (run / "eval.jsonl").write_text("".join(json.dumps({"step": s, "val_loss": v, "val_ppl_bound": 2.0}) + "\n"
                                                for s, v in ((0, 3.0), (10, 2.0))))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "tokens_per_s": 5.0}) + "\n")
        assert summarize(str(run)) == 0
        out = capsys.readouterr().out
        assert title in out and f"objective {objective}" in out
        assert ("NELBO" in out) == (objective == "mdlm"), out
