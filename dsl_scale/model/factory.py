"""Building the DiT from the run config: each rank builds its own stage and shards only, initialised from the
run's seed identically at every layout (model/init.py)."""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.transformer import TransformerConfig

from dsl_scale.config import ArchitectureConfig, ModelConfig, ObjectiveSchema
from dsl_scale.model.dit import DiT, DiTConfig
from dsl_scale.model.init import Whole, as_is


def dit_config(model: ModelConfig, vocab_size: int, causal: bool = False,
               objective: ObjectiveSchema | None = None, mask_id: int | None = None) -> DiTConfig:
    """The model's shape (every ArchitectureConfig field of `model`), the vocabulary, and DSL's converter
    when `objective` is DSL's."""
    dsl = objective is not None and objective.name == "dsl"
    shape = {f.name: getattr(model, f.name) for f in dataclasses.fields(ArchitectureConfig)}
    return DiTConfig(
        **shape,
        converter_key_dim=objective.key_dim if dsl else 0,
        converter_key_seed=objective.key_seed if dsl else 0,
        converter_beta_init=objective.beta_init if dsl else 1.0,
        mask_id=mask_id if mask_id is not None else vocab_size - 1,
        vocab_size=vocab_size, causal=causal,
    )


def build_dit(model: ModelConfig, vocab_size: int, seed: int, causal: bool = False, tp: int = 1,
              pp: int = 1, stage: int = 0, objective: ObjectiveSchema | None = None,
              mask_id: int | None = None, sequence_parallel: bool = False,
              activation_dtype: torch.dtype = torch.float32, whole: Whole = as_is) -> DiT:
    """Pipeline stage `stage` of the DiT, this rank's tensor-parallel shards only: no rank builds another stage,
    and each parameter's values depend on (seed, its global name) only, so a layout never changes the initial
    weights (model/init.py). Parameters are built in fp32 (the training engine casts them for bf16 training, or a
    partitioning build context creates them in the training dtype);
    `activation_dtype` is the dtype the stages exchange between them (the training precision: the receiving
    buffers are allocated in it). `whole`: see DiT (the caller's way to make a partitioned parameter whole
    while it is initialised; parallel/ provides one for ZeRO-3)."""
    if not 0 <= stage < pp:
        raise ValueError(f"pipeline stage {stage} does not exist at parallel.pp={pp}")
    cfg = dit_config(model, vocab_size, causal, objective, mask_id)
    # TransformerConfig rather than its base ModelParallelConfig: megatron's pipeline schedules read
    # transformer fields (hidden_size for the p2p buffers, among others).
    mp_config = TransformerConfig(
        num_layers=cfg.n_blocks, hidden_size=cfg.hidden, num_attention_heads=cfg.n_heads,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, use_cpu_initialization=True,
        params_dtype=torch.float32, pipeline_dtype=activation_dtype, sequence_parallel=sequence_parallel,
    )
    dit = DiT(cfg, mp_config, stage=stage, seed=seed, whole=whole)
    # the global generator in the same state on every rank and stage, whatever each stage's modules drew
    torch.manual_seed(seed)
    return dit
