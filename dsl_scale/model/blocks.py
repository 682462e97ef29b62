"""One DiT block: adaLN-modulated attention and MLP with gated, dropped-out residuals.

Activations are [seq, batch, hidden] (megatron-core's layout). The QKV projection is column-parallel
with its output rows grouped per head as (q, k, v), so a tensor-parallel shard holds whole heads.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from torch import nn

from dsl_scale.model.layers import LayerNormNoBias, apply_rotary, modulate


def default_linear_init(weight: torch.Tensor) -> None:
    """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) on a [out, in] master weight."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def zeros_init(weight: torch.Tensor) -> None:
    nn.init.zeros_(weight)


class DiTBlock(nn.Module):
    def __init__(
        self,
        hidden: int,
        n_heads: int,
        cond_dim: int,
        mlp_ratio: int,
        dropout: float,
        causal: bool,
        mp_config: ModelParallelConfig,
    ):
        super().__init__()
        tp = mp_config.tensor_model_parallel_size
        self.head_dim = hidden // n_heads
        self.local_heads = n_heads // tp
        self.dropout = dropout
        self.causal = causal
        self.sequence_parallel = mp_config.sequence_parallel and tp > 1
        self.norm1 = LayerNormNoBias(hidden)
        self.attn_qkv = ColumnParallelLinear(
            hidden, 3 * hidden, config=mp_config, init_method=default_linear_init, bias=False,
            gather_output=False,
        )
        self.attn_out = RowParallelLinear(
            hidden, hidden, config=mp_config, init_method=default_linear_init, bias=False,
            input_is_parallel=True, skip_bias_add=False,
        )
        self.norm2 = LayerNormNoBias(hidden)
        self.mlp_fc1 = ColumnParallelLinear(
            hidden, mlp_ratio * hidden, config=mp_config, init_method=default_linear_init, bias=True,
            gather_output=False,
        )
        self.mlp_fc2 = RowParallelLinear(
            mlp_ratio * hidden, hidden, config=mp_config, init_method=default_linear_init, bias=True,
            input_is_parallel=True, skip_bias_add=False,
        )
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)
        if mp_config.sequence_parallel:  # these see only this rank's part of the sequence
            mark_sequence_parallel(self.norm1, self.norm2, self.adaLN_modulation)

    def _residual(self, branch: torch.Tensor, gate: torch.Tensor, skip: torch.Tensor,
                  seeds: list[int] | None, site: int) -> torch.Tensor:
        if seeds is not None and self.training and self.dropout > 0:
            shard = (parallel_state.get_tensor_model_parallel_rank(),
                     parallel_state.get_tensor_model_parallel_world_size()) if self.sequence_parallel else (0, 1)
            keep = seeded_keep_scale(branch, self.dropout, [mix_seed(s, site) for s in seeds], shard)
            return self.dropped_residual(skip, gate, branch, keep)
        if self.training and self.dropout > 0:
            return self.gated_residual(skip, gate, F.dropout(branch, p=self.dropout))
        return self.gated_residual(skip, gate, branch)

    @staticmethod
    def gated_residual(skip: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """skip + gate · branch, one kernel."""
        return torch.addcmul(skip, gate, branch)

    @staticmethod
    def dropped_residual(skip: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor,
                         keep: torch.Tensor) -> torch.Tensor:
        """skip + gate · (branch · keep), keep the dropout mask already scaled by 1 / (1 − p): two kernels."""
        return torch.addcmul(skip, gate, branch * keep)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.attn_qkv(x)  # the whole sequence, also when x is a sequence-parallel shard
        seq, batch, _ = qkv.shape
        qkv = qkv.view(seq, batch, self.local_heads, 3, self.head_dim)
        q, k = apply_rotary(qkv[:, :, :, :2], cos, sin).unbind(dim=3)  # q and k rotated together
        v = qkv[:, :, :, 2]
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        out = out.permute(2, 0, 1, 3).reshape(seq, batch, self.local_heads * self.head_dim)
        out, _ = self.attn_out(out)
        return out

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.mlp_fc1(x)
        h = F.gelu(h, approximate="tanh")
        out, _ = self.mlp_fc2(h)
        return out

    def attention_branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor) -> torch.Tensor:
        return self.attention(modulate(self.norm1(x), shift, scale), cos, sin)

    def mlp_branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.mlp(modulate(self.norm2(x), shift, scale))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                dropout_seeds: list[int] | None = None):
        """x: [s, b, H]; cond: [b, C]; cos, sin: Rotary.cos_sin's. `dropout_seeds` (one per row, this block's):
        seeded dropout masks (see `seeded_dropout`); without them, F.dropout from the global generator.
        The branches and residuals are methods so that parallel/compile.py can compile them (the seeded
        masks stay eager: their per-row generators are host-side Python)."""
        mods = self.adaLN_modulation(cond)[None].chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = self._residual(self.attention_branch(x, shift_msa, scale_msa, cos, sin), gate_msa, x, dropout_seeds, 0)
        return self._residual(self.mlp_branch(x, shift_mlp, scale_mlp), gate_mlp, x, dropout_seeds, 1)


_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, index: int) -> int:
    """A 63-bit seed from (seed, index): splitmix64's finaliser on seed + (index + 1)·golden gamma.
    Cheap (Python ints), so it can run per row and per dropout site on every forward."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def seeded_keep_scale(x: torch.Tensor, p: float, seeds: list[int], shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The dropout multiplier for x [s, b, H]: row b is 1 / (1 − p) where U ≥ p, else 0, U drawn as
    [s · shards, H] from a generator seeded with seeds[b] (the `shard`th of `shards` equal parts of the sequence
    under sequence parallelism). A pure function of the row's seed: the same in any batch, micro-batch, layout
    or activation recomputation. In x's dtype, [s, b, H]."""
    rank, shards = shard
    seq, batch, hidden = x.shape
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} dropout seeds for a batch of {batch}")
    keep = []
    for seed in seeds:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        u = torch.rand(seq * shards, hidden, generator=generator, device=x.device)
        keep.append(u[rank * seq:(rank + 1) * seq] >= p)
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return torch.stack(keep, dim=1).to(x.dtype) * scale


def seeded_dropout(x: torch.Tensor, p: float, seeds: list[int], shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Dropout of x [s, b, H] with `seeded_keep_scale`'s mask, scaled like F.dropout."""
    return x * seeded_keep_scale(x, p, seeds, shard)


def mark_sequence_parallel(*modules: nn.Module) -> None:
    """Replicated parameters applied to a sequence shard: their gradients are partial sums over the TP
    group (parallel/engine.py adds them up), as megatron marks its LayerNorms."""
    for module in modules:
        for param in module.parameters():
            param.sequence_parallel = True


class FinalLayer(nn.Module):
    """adaLN → LayerNorm → column-parallel Linear(H, V) with bias, zero-initialised (vocab-parallel logits).
    Under sequence parallelism the DiT gathers the sequence before this layer."""

    def __init__(self, hidden: int, vocab_size: int, cond_dim: int, mp_config: ModelParallelConfig):
        super().__init__()
        self.norm_final = LayerNormNoBias(hidden)
        self.linear = ColumnParallelLinear(
            hidden, vocab_size, config=dataclasses.replace(mp_config, sequence_parallel=False),
            init_method=zeros_init, bias=True, gather_output=False,
        )
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: [b, s, H] → logits [b, s, V / tp]."""
        shift, scale = self.adaLN_modulation(cond)[:, None].chunk(2, dim=-1)
        logits, _ = self.linear(modulate(self.norm_final(x), shift, scale))
        return logits
