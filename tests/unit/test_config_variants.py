"""One schema per objective and sampler variant, choice strings checked in one place, saved configs of
older runs still load, and the parallel layout checked by one function."""

from __future__ import annotations

import dataclasses

import pytest

from dsl_scale.config import Config, validate
from tests.unit.test_config import composed
from tests.unit.test_sampling_config import composed as composed_sample


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["objective=mdlm", "objective.key_dim=9"], "key_dim"), (["objective=ar", "objective.eps=0.01"], "eps"),
     (["objective=mdlm", "objective.bound_points=3"], "bound_points")],
)
def test_a_field_of_another_objective_is_rejected(overrides, key):
    with pytest.raises(Exception, match=key):
        composed(*overrides)


def test_an_appended_field_of_another_objective_is_rejected_too():
    with pytest.raises(ValueError, match="objective.key_dim"):
        composed("objective=mdlm", "+objective.key_dim=9")


def test_a_sampler_name_that_does_not_fit_its_fields_is_rejected():
    from dsl_scale.sampling.config import validate_sample_config
    from dsl_scale.sampling.registry import sampler_names

    with pytest.raises(ValueError, match="sampler.name='mdlm'"):
        validate_sample_config(composed_sample("sampler=remdm_loop", "sampler.name=mdlm"), sampler_names())


def test_each_objective_composes_its_own_fields():
    dsl = composed("objective=dsl", "objective.key_dim=9").objective
    assert (dsl.name, dsl.key_dim, dsl.eps, dsl.p_roar) == ("dsl", 9, 1e-3, 0.1)
    mdlm = composed("objective=mdlm", "objective.eps=0.01").objective
    assert (mdlm.name, mdlm.eps) == ("mdlm", 0.01) and not hasattr(mdlm, "key_dim")
    assert not hasattr(composed("objective=ar").objective, "eps")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["sampler=mdlm", "sampler.eta=0.1"], "eta"), (["sampler=remdm_cap", "sampler.t_on=0.5"], "t_on"),
     (["sampler=dsl_continuous", "sampler.eta=0.1"], "eta"), (["sampler=remdm_loop", "sampler.s_min=0.1"], "s_min")],
)
def test_a_field_of_another_sampler_is_rejected(overrides, key):
    with pytest.raises(Exception, match=key):
        composed_sample(*overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["train.precision=bf61"], r"train\.precision='bf61'.*'auto'.*'fp32'.*'bf16'"),
     (["data.format=parquet"], r"data\.format='parquet'.*'mds'.*'wds'.*'both'"),
     (["objective=dsl", "objective.name=mdlm"], r"objective\.name='mdlm'.*'dsl'")],
)
def test_an_unknown_choice_string_names_the_key_and_the_choices(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(composed(*overrides))


def test_an_unknown_sample_weights_choice_names_the_choices():
    from dsl_scale.sampling.config import validate_sample_config
    from dsl_scale.sampling.registry import sampler_names

    with pytest.raises(ValueError, match=r"weights='best'.*'auto'.*'ema'.*'model'"):
        validate_sample_config(composed_sample("weights=best"), sampler_names())


def test_a_saved_flat_objective_of_an_older_run_still_loads():
    from dsl_scale.config import config_from_saved

    old = dataclasses.asdict(Config())
    old["objective"] = {"name": "mdlm", "eps": 1e-3, "key_dim": 48, "key_seed": 0, "p_roar": 0.1, "s_clamp": 40.0}
    cfg = config_from_saved(old)
    assert cfg.objective.name == "mdlm" and cfg.objective.eps == 1e-3 and not hasattr(cfg.objective, "key_dim")
    old["objective"] = {**old["objective"], "name": "dsl", "key_dim": 8}
    assert config_from_saved(old).objective.key_dim == 8
    old["objective"] = {"name": "ar", "eps": 1e-3, "key_dim": 48}
    assert config_from_saved(old).objective.name == "ar"
    old["train"]["not_a_key"] = 1  # only fields of other variants are dropped, nothing else
    with pytest.raises(Exception, match="not_a_key"):
        config_from_saved(old)


def test_the_dit_and_snr_schedule_take_their_defaults_from_the_schema():
    from dsl_scale.config import DSLObjectiveConfig, ModelConfig
    from dsl_scale.diffusion.dsl import SNRSchedule
    from dsl_scale.model.dit import DiTConfig

    model, dit = ModelConfig(), DiTConfig()
    shared = {f.name for f in dataclasses.fields(DiTConfig)} & {f.name for f in dataclasses.fields(ModelConfig)}
    assert {"hidden", "n_blocks", "n_heads", "cond_dim", "mlp_ratio", "dropout", "recompute"} <= shared
    assert all(getattr(model, k) == getattr(dit, k) for k in shared)
    schedule, objective = SNRSchedule(), DSLObjectiveConfig()
    assert all(getattr(schedule, f.name) == getattr(objective, f.name) for f in dataclasses.fields(SNRSchedule))
    assert SNRSchedule.from_config(DSLObjectiveConfig(p_roar=0.5)).p_roar == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_heads": 3}, "model.n_heads=3 is not divisible by parallel.tp=2"),
     ({"vocab_size": 7}, "vocab.*7.*not divisible by parallel.tp=2"),
     ({"n_blocks": 3, "pp": 2}, "model.n_blocks=3 is not divisible by parallel.pp=2"),
     ({"cond_dim": 64, "pp": 2}, "model.cond_dim=64 > model.hidden=32"),
     ({"world_size": 3}, r"world size 3 is not divisible by parallel.tp × parallel.pp = 2 × 1")],
)
def test_the_parallel_layout_is_checked_in_one_place(kwargs, message):
    from dsl_scale.checkpoint.convert import check_layout as convert_check
    from dsl_scale.config import check_parallel_layout
    from dsl_scale.parallel.topology import check_layout as topology_check

    model = {"hidden": 32, "n_heads": 4, "n_blocks": 2, "cond_dim": 16, **{k: v for k, v in kwargs.items()
                                                                          if k in ("n_heads", "n_blocks", "cond_dim")}}
    vocab, pp, world = kwargs.get("vocab_size", 64), kwargs.get("pp", 1), kwargs.get("world_size")
    with pytest.raises(ValueError, match=message):
        check_parallel_layout(model, vocab, tp=2, pp=pp, world_size=world)
    if world is None:
        with pytest.raises(ValueError, match=message.split(" is not")[0].split(" >")[0]):
            convert_check({"model": model}, 2, pp, vocab)
    else:
        with pytest.raises(ValueError, match=message):
            topology_check(world, 2, pp)
