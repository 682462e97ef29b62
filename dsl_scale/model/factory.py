"""Building the DiT from the run config: same seed on every rank, so every layout starts identical."""

from __future__ import annotations

import torch
from megatron.core import ModelParallelConfig

from dsl_scale.config import ModelConfig
from dsl_scale.model.dit import DiT, DiTConfig


def dit_config(model: ModelConfig, vocab_size: int, causal: bool = False) -> DiTConfig:
    return DiTConfig(
        vocab_size=vocab_size, hidden=model.hidden, n_blocks=model.n_blocks, n_heads=model.n_heads,
        cond_dim=model.cond_dim, mlp_ratio=model.mlp_ratio, dropout=model.dropout, causal=causal,
        time_conditioning=model.time_conditioning,
    )


def build_dit(model: ModelConfig, vocab_size: int, seed: int, causal: bool = False, tp: int = 1,
              pp: int = 1) -> DiT:
    torch.manual_seed(seed)
    mp_config = ModelParallelConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, use_cpu_initialization=True,
        params_dtype=torch.float32,
    )
    return DiT(dit_config(model, vocab_size, causal), mp_config)
