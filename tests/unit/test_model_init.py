"""model/init.py: shards drawn alone equal slices of the whole tensor, pipeline stages equal the parts of one
network, and the distributions are the ones megatron's and torch's own initialisation would draw."""

from __future__ import annotations

import math

import pytest
import torch
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import VocabParallelEmbedding
from torch import nn

from dsl_scale.config import ModelConfig, ObjectiveConfig
from dsl_scale.model import DiT, DiTConfig
from dsl_scale.model import init as model_init
from dsl_scale.model.blocks import DiTBlock, FinalLayer
from dsl_scale.model.dit import default_embedding_init
from dsl_scale.model.factory import build_dit
from dsl_scale.model.layers import NoiseEmbedder

CFG = DiTConfig(vocab_size=128, hidden=64, n_blocks=2, n_heads=4, cond_dim=64, dropout=0.0)


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("parts", [2, 3, 5])
def test_a_shard_drawn_alone_equals_its_slice_of_the_whole_tensor(dim, parts):
    full_shape = (150, 90) if dim == 0 else (40, 150)  # 150 = 2·64 + 22: shards straddle the 64-index blocks
    whole = model_init.fill_uniform_(torch.empty(full_shape), "w", full_shape, dim, 0, 0.5, seed=7)
    assert whole.abs().max() <= 0.5 and whole.std() > 0.2
    size = full_shape[dim] // parts
    for part in range(parts):
        shape = list(full_shape)
        shape[dim] = size
        shard = model_init.fill_uniform_(torch.empty(shape), "w", full_shape, dim, part * size, 0.5, seed=7)
        assert torch.equal(shard, whole.narrow(dim, part * size, size)), part
    other = model_init.fill_uniform_(torch.empty(full_shape), "v", full_shape, dim, 0, 0.5, seed=7)
    assert not torch.equal(other, whole), "another name draws other numbers"


def test_pipeline_stages_hold_the_parts_of_the_single_stage_network(process_group):
    model = ModelConfig(hidden=32, n_blocks=4, n_heads=2, cond_dim=16)
    dsl = ObjectiveConfig("dsl", key_dim=8)
    whole = dict(build_dit(model, 64, seed=11, objective=dsl, mask_id=63).named_parameters())
    seen = []
    for stage in range(2):
        part = build_dit(model, 64, seed=11, pp=2, stage=stage, objective=dsl, mask_id=63)
        for name, param in part.named_parameters():
            assert torch.equal(param, whole[name]), name
            seen.append(name)
    assert sorted(seen) == sorted(whole)
    assert torch.equal(whole["converter.mask_weight"], whole["vocab_embed.weight"][63])
    assert torch.equal(whole["converter.token_weight"], whole["vocab_embed.weight"])
    other = dict(build_dit(model, 64, seed=12).named_parameters())
    assert not torch.equal(other["blocks.3.mlp_fc1.weight"], whole["blocks.3.mlp_fc1.weight"])


def reference_network(cfg: DiTConfig) -> nn.Module:
    """The DiT's modules initialised by megatron (CPU, whole weights) and torch themselves, under the DiT's names."""
    config = ModelParallelConfig(use_cpu_initialization=True)
    blocks = {str(i): DiTBlock(cfg.hidden, cfg.n_heads, cfg.cond_dim, cfg.mlp_ratio, 0.0, False, config)
              for i in range(cfg.n_blocks)}
    return nn.ModuleDict({
        "vocab_embed": VocabParallelEmbedding(cfg.vocab_size, cfg.hidden, init_method=default_embedding_init,
                                              config=config),
        "sigma_map": NoiseEmbedder(cfg.cond_dim),
        "blocks": nn.ModuleDict(blocks),
        "output_layer": FinalLayer(cfg.hidden, cfg.vocab_size, cfg.cond_dim, config),
    })


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True) / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True) / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def test_every_parameter_has_the_distribution_the_modules_own_initialisation_draws(process_group):
    torch.manual_seed(0)
    reference = dict(reference_network(CFG).named_parameters())
    ours = dict(DiT(CFG, seed=3).named_parameters())
    assert set(ours) == set(reference)
    random = 0
    for name, param in ours.items():
        expected = reference[name].detach()
        assert param.shape == expected.shape, name
        if torch.all(expected == expected.flatten()[0]):  # a constant (zeros, ones)
            assert torch.equal(param, expected), name
            continue
        random += 1
        n = expected.numel()
        critical = 1.95 * math.sqrt(2 / n)  # the KS test's 0.1 % level for two samples of n
        assert ks_statistic(param.detach(), expected) < critical, name
    assert random == 4 * CFG.n_blocks + 5  # qkv, out, fc1, fc2 per block; embedding; the noise map's 4


def test_a_parameter_without_an_initialisation_rule_is_named_before_any_work(process_group):
    model = DiT(CFG)
    model.extra = nn.Linear(2, 2)
    before = model.vocab_embed.weight.clone()
    with pytest.raises(ValueError, match="'extra.weight' matches 0 initialisation rules"):
        model_init.initialize(model, seed=1)
    assert torch.equal(model.vocab_embed.weight, before)


def test_tensor_parallel_shards_drawn_alone_equal_the_single_rank_weights(process_group):
    """TP = 2 emulated in one process: each half of a sharded parameter, drawn as that rank would draw it,
    equals the matching half of the TP = 1 weight (row-parallel weights are cut along dim 1)."""
    model = DiT(CFG, seed=4)
    dims = set()
    for name, param in model.named_parameters():
        if not getattr(param, "tensor_model_parallel", False) or model_init.rule_for(name) != model_init.FAN_IN_UNIFORM:
            continue
        full_shape, dim, _ = model_init.shard_of(param, tp=1, tp_rank=0)
        bound = 1 / math.sqrt(full_shape[1])
        dims.add(dim)
        for rank, expected in enumerate(param.detach().chunk(2, dim=param.partition_dim)):
            drawn = model_init.fill_uniform_(torch.empty(expected.shape), name, full_shape, param.partition_dim,
                                             rank * expected.shape[param.partition_dim], bound, seed=4)
            assert torch.equal(drawn, expected), (name, rank)
    assert dims == {0, 1}


def test_a_stage_outside_the_pipeline_is_refused(process_group):
    with pytest.raises(ValueError, match="pipeline stage 2 does not exist at parallel.pp=2"):
        build_dit(ModelConfig(hidden=32, n_blocks=4, n_heads=2, cond_dim=16), 64, seed=0, pp=2, stage=2)
