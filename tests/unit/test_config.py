"""The config schema: unknown keys and inconsistent settings fail early with the key's name."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from dsl_scale.config import Config, register_configs, to_config, validate
from dsl_scale.launch import CONFIG_DIR, strip_launcher_args
from tests.launching import REPO, env


def composed(*overrides: str) -> Config:
    register_configs()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return to_config(compose("config", overrides=list(overrides)))


def test_model_groups_compose_into_the_schema():
    cfg = composed("model=small", "train.steps=7")
    assert (cfg.model.hidden, cfg.model.n_blocks, cfg.model.n_heads, cfg.train.steps) == (768, 12, 12, 7)
    assert composed("model=micro").model.name == "micro"


def test_unknown_and_mistyped_keys_are_rejected():
    with pytest.raises(Exception, match="stpes"):
        composed("train.stpes=3")
    with pytest.raises(Exception, match="steps"):
        composed("train.steps=many")


def test_launcher_names_the_unknown_key_and_starts_nothing():
    result = subprocess.run([sys.executable, "launchers/pretrain.py", "train.stpes=3"], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "stpes" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        (["train.global_batch=10", "train.micro_batch=4"], 1, "global_batch=10"),
        (["train.global_batch=8", "train.micro_batch=4"], 3, "data-parallel size"),
        (["parallel.tp=2"], 3, "not divisible by parallel.tp"),
        (["parallel.zero_stage=4"], 1, "zero_stage"),
        (["train.precision=fp16"], 1, "precision"),
        (["parallel.sequence_parallel=true"], 1, "sequence_parallel"),
        (["parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true"], 4, "sequence_parallel"),
    ],
)
def test_validation_errors_name_the_keys(overrides, world, message):
    with pytest.raises(ValueError, match=message):
        validate(composed(*overrides), world_size=world)


def test_pipeline_stages_accept_every_zero_stage():
    for stage in (0, 1, 2, 3):
        validate(composed("parallel.pp=2", f"parallel.zero_stage={stage}"), world_size=4)


def test_deepspeed_local_rank_argument_is_removed():
    assert strip_launcher_args(["x.py", "--local_rank=1", "a=b"]) == ["x.py", "a=b"]
    assert strip_launcher_args(["x.py", "--local_rank", "0", "a=b"]) == ["x.py", "a=b"]


def test_a_launcher_without_its_configs_says_where_it_looked(monkeypatch, tmp_path):
    from dsl_scale import launch

    monkeypatch.setattr(launch, "CONFIG_DIR", str(tmp_path / "site-packages" / "configs"))
    ran = []
    with pytest.raises(SystemExit, match="configs are not at .*site-packages/configs.*pip install -e"):
        launch.hydra_main(ran.append, "config", register_configs)
    assert not ran
