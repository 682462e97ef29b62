"""Building the DiT from the run config: same seed on every rank, so every layout starts identical."""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.transformer import TransformerConfig

from dsl_scale.config import ArchitectureConfig, ModelConfig, ObjectiveSchema
from dsl_scale.model.dit import DiT, DiTConfig


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
              activation_dtype: torch.dtype = torch.float32) -> DiT:
    """Pipeline stage `stage` of the DiT. Every stage builds the whole network's parameters in the same
    order from the same seed and keeps its own part, so a layout never changes the initial weights.
    Parameters are built in fp32 (DeepSpeed casts them for bf16 training); `activation_dtype` is the dtype the
    stages exchange between them (the training precision: the receiving buffers are allocated in it)."""
    cfg = dit_config(model, vocab_size, causal, objective, mask_id)
    # TransformerConfig rather than its base ModelParallelConfig: megatron's pipeline schedules read
    # transformer fields (hidden_size for the p2p buffers, among others).
    mp_config = TransformerConfig(
        num_layers=cfg.n_blocks, hidden_size=cfg.hidden, num_attention_heads=cfg.n_heads,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, use_cpu_initialization=True,
        params_dtype=torch.float32, pipeline_dtype=activation_dtype, sequence_parallel=sequence_parallel,
    )
    torch.manual_seed(seed)
    if pp == 1:
        return DiT(cfg, mp_config)
    stages = [DiT(cfg, mp_config, stage=s) for s in range(pp)]  # same draws as one DiT, in the same order
    return stages[stage]
