"""ZeRO-3's start-up on the device path: a model built inside deepspeed.zero.Init gets the same fp32 host draws
(cast once to the training dtype) and the same fp32 rotary frequencies as a plain build, and after the engine is
built every buffer (rotary's inv_freq, DSL's converter keys) is on the compute device, which DeepSpeed does not
move a zero.Init model to. On a CPU machine zero.Init allocates on the CPU, so the device is pointed at `meta`
for the buffer check: like a GPU, it is not where the buffers were made."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.config import Config, ModelConfig, ObjectiveConfig
from dsl_scale.model.factory import build_dit
from dsl_scale.parallel import engine as engine_lib
from dsl_scale.parallel import zero_init
from dsl_scale.parallel.topology import Topology

ONE_RANK = Topology(rank=0, world_size=1, tp=1, pp=1, dp=1, tp_rank=0, pp_rank=0, dp_rank=0)
MODEL = ModelConfig(hidden=32, n_heads=2, cond_dim=16, n_blocks=2, seq_len=16)
DSL = ObjectiveConfig("dsl", key_dim=8)
VOCAB = 64


def zero3_config(precision: str) -> Config:
    cfg = Config()
    cfg.train.precision, cfg.parallel.zero_stage = precision, 3
    cfg.train.global_batch = cfg.train.micro_batch = 1
    return cfg


def build_in_zero_init(cfg: Config, monkeypatch):
    for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    context, whole = zero_init.partitioned_build(cfg, ONE_RANK)
    with context:
        return build_dit(MODEL, VOCAB, 1, objective=DSL, whole=whole)


def test_zero3_bf16_build_draws_in_fp32_on_the_host_and_keeps_fp32_rotary(process_group, monkeypatch):
    import deepspeed

    reference = build_dit(MODEL, VOCAB, 1, objective=DSL)
    model = build_in_zero_init(zero3_config("bf16"), monkeypatch)
    inv_freq = model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32 and torch.equal(inv_freq, reference.rotary_emb.inv_freq)
    assert model.converter.keys.dtype == torch.float32
    built = dict(model.named_parameters())
    assert sorted(built) == sorted(dict(reference.named_parameters()))
    differ = []
    for name, expected in reference.named_parameters():
        with deepspeed.zero.GatheredParameters([built[name]]):
            value = built[name].data
            assert value.dtype == torch.bfloat16, name
            if not torch.equal(value, expected.detach().to(torch.bfloat16)):
                differ.append(name)
    assert not differ, f"zero.Init build differs from fp32 draws cast to bf16: {differ}"


def test_every_buffer_is_on_the_compute_device_after_the_zero3_engine_is_built(process_group, monkeypatch):
    meta = torch.device("meta")
    cfg = zero3_config("fp32")
    model = build_in_zero_init(cfg, monkeypatch)
    buffers = dict(model.named_buffers())
    assert {"rotary_emb.inv_freq", "converter.keys"} <= set(buffers)
    monkeypatch.setattr(engine_lib, "compute_device", lambda: meta)
    engine = engine_lib.build_engine(model, cfg, ONE_RANK)
    placed = {name: b.device for name, b in engine.module.named_buffers()}
    assert placed and all(device == meta for device in placed.values()), placed
    assert all(b.dtype == buffers[name].dtype for name, b in engine.module.named_buffers())


def test_buffers_to_keeps_each_buffers_dtype_and_names_what_it_moved():
    module = torch.nn.Module()
    module.register_buffer("a", torch.zeros(2, dtype=torch.float32))
    module.inner = torch.nn.Module()
    module.inner.register_buffer("b", torch.zeros(2, dtype=torch.int64))
    module.inner.register_buffer("none", None)
    moved = engine_lib.buffers_to(module, torch.device("meta"))
    assert moved == ["a", "inner.b"]
    assert module.a.device.type == "meta" and module.inner.b.dtype == torch.int64
    assert engine_lib.buffers_to(module, torch.device("meta")) == []


@pytest.mark.parametrize("inside", [False, True])
def test_host_factories_is_a_no_op_outside_zero_init(inside, process_group, monkeypatch):
    if inside:
        for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}.items():
            monkeypatch.setenv(name, value)
        context, _ = zero_init.partitioned_build(zero3_config("bf16"), ONE_RANK)
    else:
        context = torch.no_grad()
    with context:
        before = torch.empty(1).dtype
        with zero_init.host_factories():
            assert torch.empty(1).dtype == torch.float32
        assert torch.empty(1).dtype == before == (torch.bfloat16 if inside else torch.float32)
