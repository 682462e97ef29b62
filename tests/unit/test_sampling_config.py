"""launchers/sample.py's schema: sampler groups compose, unknown keys and bad values are rejected."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from dsl_scale.config import to_config
from dsl_scale.launch import CONFIG_DIR
from dsl_scale.sampling.config import SampleConfig, register_sample_configs, validate_sample_config
from dsl_scale.sampling.registry import sampler_names
from tests.launching import REPO, env


def composed(*overrides: str) -> SampleConfig:
    register_sample_configs()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return to_config(compose("sample", overrides=list(overrides)))


def test_sampler_groups_carry_the_remdm_defaults():
    assert composed().sampler.name == "mdlm"
    assert composed("sampler=remdm_cap").sampler.eta == 0.008
    assert composed("sampler=remdm_rescale").sampler.eta == 0.015
    assert composed("sampler=remdm_conf").sampler.name == "remdm_conf"
    loop = composed("sampler=remdm_loop", "sampler.eta=0.03", "steps=9").sampler
    assert (loop.name, loop.eta, loop.t_on, loop.t_off, loop.alpha_on) == ("remdm_loop", 0.03, 0.55, 0.05, 0.9)
    for name in ("mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_loop"):
        cfg = composed(f"sampler={name}")
        assert cfg.sampler.name == name
        validate_sample_config(cfg, sampler_names())


def test_unknown_keys_and_samplers_are_rejected():
    with pytest.raises(Exception, match="etaa"):
        composed("sampler.etaa=1")
    with pytest.raises(Exception, match="nope"):
        composed("sampler=nope")
    with pytest.raises(Exception, match="stpes"):
        composed("stpes=3")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["sampler.name=nope"], "sampler.name"), (["top_p=0"], "top_p"), (["steps=0"], "steps"),
     (["sampler=remdm_loop", "sampler.t_on=0.01"], "t_on"), (["weights=best"], "weights")],
)
def test_validation_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_sample_config(composed(*overrides), sampler_names())


def test_launcher_names_the_unknown_key_and_starts_nothing():
    result = subprocess.run([sys.executable, "launchers/sample.py", "sampler.etaa=1"], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "etaa" in result.stderr
