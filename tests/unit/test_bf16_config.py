"""The DeepSpeed settings behind bf16 numerics and the optimizer: fp32 gradient accumulation and reduction per ZeRO
stage, torch's fused AdamW on a GPU (its foreach kernel on the CPU) as DeepSpeed's own optimizer construction
builds it, the ZeRO-1 patch's undo, and the EMA's source (fp32 masters when there are any)."""

from __future__ import annotations

import math

import pytest
import torch

from dsl_scale.config import Config
from dsl_scale.core import patches
from dsl_scale.parallel import engine as engine_lib
from dsl_scale.parallel.topology import Topology
from dsl_scale.train.ema import EMA

ONE_RANK = Topology(rank=0, world_size=1, tp=1, pp=1, dp=1, tp_rank=0, pp_rank=0, dp_rank=0)


def config(precision: str, zero_stage: int) -> Config:
    cfg = Config()
    cfg.train.precision, cfg.parallel.zero_stage = precision, zero_stage
    return cfg


def one_rank_engine(module: torch.nn.Module, precision: str, monkeypatch):
    """A ZeRO-0 engine of one rank, one example per step (needs the process_group fixture)."""
    for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    cfg = config(precision, 0)
    cfg.train.global_batch = cfg.train.micro_batch = 1
    return engine_lib.build_engine(module, cfg, ONE_RANK)


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_bf16_accumulates_and_reduces_in_fp32(zero_stage):
    ds = engine_lib.deepspeed_config(config("bf16", zero_stage), ONE_RANK)
    assert ds["bf16"] == {"enabled": True} and ds["communication_data_type"] == "fp32"
    if zero_stage == 0:  # DeepSpeed refuses fp32 accumulation without ZeRO: parallel/fp32_grads.py does it
        assert "data_types" not in ds and ds["gradient_clipping"] == 0.0  # engine.step clips the fp32 sums
    else:
        assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["gradient_clipping"] == Config().optim.grad_clip


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_fp32_training_keeps_deepspeeds_defaults(zero_stage):
    ds = engine_lib.deepspeed_config(config("fp32", zero_stage), ONE_RANK)
    assert ds["bf16"] == {"enabled": False}
    assert "data_types" not in ds and "communication_data_type" not in ds


def adamw_built_by_deepspeed(params: dict, weights: torch.Tensor) -> torch.optim.Optimizer:
    """The optimizer DeepSpeed's engine builds from the config's AdamW parameters (its own code path)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    params = dict(params)
    adam_w_mode = params.pop("adam_w_mode")
    cls, extra = DeepSpeedEngine.get_optimizer_configuration(None, params, adam_w_mode)  # torch_adam: no `self`
    return cls([weights], **params, **extra)


@pytest.mark.parametrize("gpu", [False, True])
def test_torch_adamw_fused_on_a_gpu_and_foreach_on_the_cpu(monkeypatch, gpu):
    monkeypatch.setattr(engine_lib, "on_gpu", lambda: gpu)
    params = engine_lib.deepspeed_config(config("fp32", 0), ONE_RANK)["optimizer"]["params"]
    assert params["torch_adam"] is True
    assert params.get("fused", False) is gpu
    # the flag reaches torch's AdamW through DeepSpeed, and the fused kernel (CPU-capable) steps like foreach
    weights = torch.nn.Parameter(torch.linspace(-1, 1, 50, device="cpu"))
    optimizer = adamw_built_by_deepspeed(params, weights)
    assert isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults["fused"]) is gpu
    reference = torch.nn.Parameter(weights.detach().clone())
    plain = torch.optim.AdamW([reference], lr=params["lr"], betas=params["betas"], eps=params["eps"],
                              weight_decay=params["weight_decay"], foreach=False)
    for k in range(3):
        for p in (weights, reference):
            p.grad = torch.sin(torch.arange(50, dtype=torch.float32, device="cpu") + k)
        optimizer.step()
        plain.step()
    torch.testing.assert_close(weights, reference, rtol=1e-6, atol=1e-7)


def test_the_zero1_patch_undoes_cleanly():
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._do_optimizer_sanity_check
    patches.apply(engine_lib.ZERO1_FP32_ACCUMULATION)
    assert DeepSpeedEngine._do_optimizer_sanity_check is not original
    patches.undo(engine_lib.ZERO1_FP32_ACCUMULATION)
    assert DeepSpeedEngine._do_optimizer_sanity_check is original


class Held:
    """A WeightSource over given tensors, keyed as a sharded optimizer might key them (not by parameter name)."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.weights = weights

    def local(self) -> dict[str, torch.Tensor]:
        return self.weights

    def to_named(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"param.{k}": v.clone() for k, v in local.items()}

    def from_named(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.removeprefix("param."): v for k, v in named.items()}


def test_ema_averages_what_its_source_holds_and_saves_and_loads_through_its_names():
    masters = {"g0": torch.randn(5, dtype=torch.float64).float() + 1e-3, "g1": torch.randn(3)}
    source = Held(masters)
    ema = EMA(source, 0.75)
    assert all(torch.equal(ema.shadow[k], m) and ema.shadow[k] is not m for k, m in masters.items())
    updated = {k: m + 0.5 for k, m in masters.items()}
    source.weights = updated
    ema.update()
    expected = {k: m.lerp(updated[k], 0.25) for k, m in masters.items()}
    assert all(torch.equal(ema.shadow[k], expected[k]) for k in masters)
    state = ema.state_dict()
    assert sorted(state) == ["param.g0", "param.g1"]
    fresh = EMA(Held({k: torch.zeros_like(m) for k, m in masters.items()}), 0.75)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.shadow[k], expected[k]) for k in masters)


def test_ema_of_a_module_without_masters_averages_its_weights_and_names_missing_ones(process_group, monkeypatch):
    from dsl_scale.parallel.masters import NamedWeights, weight_source

    engine = one_rank_engine(torch.nn.Linear(3, 2), "fp32", monkeypatch)
    source = weight_source(engine)
    assert isinstance(source, NamedWeights)
    ema = EMA(source, 0.75)  # fp32 training: the module's weights are the masters
    for name, param in engine.module.named_parameters():
        assert torch.equal(ema.shadow[name], param.detach().float())
    with pytest.raises(KeyError, match="EMA state lacks parameters: \\['bias'\\]"):
        ema.load_state_dict({"weight": torch.zeros(2, 3)})


def test_a_non_finite_gradient_skips_the_step_under_bf16_without_zero(process_group, monkeypatch):
    """As DeepSpeed's bf16 wrapper skips a step on a non-finite bf16 gradient, so with the fp32 accumulators."""
    from dsl_scale.parallel.masters import local_masters

    engine = one_rank_engine(torch.nn.Linear(4, 1), "bf16", monkeypatch)
    before = {n: m.clone() for n, m in local_masters(engine).items()}
    for value, skipped in ((float("inf"), 1), (1.0, 1)):
        engine.backward(engine(torch.full((1, 4), value, dtype=torch.bfloat16, device="cpu")).sum())
        norm = engine_lib.step(engine, 0, 1.0)
        assert math.isfinite(norm) is (value == 1.0) and engine.skipped_steps == skipped
        after = local_masters(engine)
        assert all(torch.equal(after[n], before[n]) for n in before) is (value != 1.0)  # moved only when finite
