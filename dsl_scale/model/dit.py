"""The MDLM Diffusion Transformer (SPEC §2), built from megatron-core tensor-parallel layer types.

The network is the same at every tensor-parallel size: megatron's layers hold their shard of each
weight; nothing here talks to process groups directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import VocabParallelEmbedding, vocab_parallel_cross_entropy
from torch import nn

from dsl_scale.model.blocks import DiTBlock, FinalLayer
from dsl_scale.model.layers import NoiseEmbedder, Rotary


@dataclass
class DiTConfig:
    vocab_size: int = 50258
    hidden: int = 512
    n_blocks: int = 8
    n_heads: int = 8
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    causal: bool = False
    time_conditioning: bool = False

    def validate(self, tp: int = 1) -> None:
        if self.hidden % self.n_heads:
            raise ValueError(f"model.hidden={self.hidden} is not divisible by model.n_heads={self.n_heads}")
        if (self.hidden // self.n_heads) % 2:
            raise ValueError(f"head dim {self.hidden // self.n_heads} must be even for rotary embeddings")
        if self.n_heads % tp:
            raise ValueError(f"model.n_heads={self.n_heads} is not divisible by parallel.tp={tp}")
        if self.vocab_size % tp:
            raise ValueError(f"vocab size {self.vocab_size} is not divisible by parallel.tp={tp}")


def default_embedding_init(weight: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig, mp_config: ModelParallelConfig | None = None):
        super().__init__()
        mp_config = mp_config or ModelParallelConfig(use_cpu_initialization=True)
        cfg.validate(mp_config.tensor_model_parallel_size)
        self.cfg = cfg
        self.vocab_embed = VocabParallelEmbedding(
            cfg.vocab_size, cfg.hidden, init_method=default_embedding_init, config=mp_config
        )
        self.sigma_map = NoiseEmbedder(cfg.cond_dim)
        self.rotary_emb = Rotary(cfg.hidden // cfg.n_heads)
        self.blocks = nn.ModuleList(
            DiTBlock(cfg.hidden, cfg.n_heads, cfg.cond_dim, cfg.mlp_ratio, cfg.dropout, cfg.causal, mp_config)
            for _ in range(cfg.n_blocks)
        )
        self.output_layer = FinalLayer(cfg.hidden, cfg.vocab_size, cfg.cond_dim, mp_config)

    @property
    def vocab_range(self) -> tuple[int, int]:
        """[start, end) of the vocabulary ids whose logits this rank holds."""
        return self.vocab_embed.vocab_start_index, self.vocab_embed.vocab_end_index

    def forward(self, tokens: torch.Tensor | None, sigma: torch.Tensor | None = None,
                input_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [b, s] ids (or `input_embeds` [b, s, H] in place of their embedding, e.g. from DSL's
        converter) → vocab-parallel logits [b, s, V / tp]. σ is ignored unless time-conditioned."""
        if input_embeds is None:
            input_embeds = self.vocab_embed(tokens)
        batch, seq, _ = input_embeds.shape
        if sigma is None or not self.cfg.time_conditioning:
            sigma = torch.zeros(batch, device=input_embeds.device)
        cond = torch.nn.functional.silu(self.sigma_map(sigma)).to(self.vocab_embed.weight.dtype)
        x = input_embeds.transpose(0, 1)  # [s, b, H]
        cos, sin = self.rotary_emb.cos_sin(seq)
        for block in self.blocks:
            x = block(x, cond, cos, sin)
        return self.output_layer(x.transpose(0, 1), cond)

    @staticmethod
    def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token −log softmax(logits)[target] without gathering vocab-parallel logits. [b, s]."""
        return vocab_parallel_cross_entropy(logits.float(), targets)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
