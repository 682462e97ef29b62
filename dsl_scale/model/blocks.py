"""One DiT block: adaLN-modulated attention and MLP with gated, dropped-out residuals.

Activations are [seq, batch, hidden] (megatron-core's layout). The QKV projection is column-parallel
with its output rows grouped per head as (q, k, v), so a tensor-parallel shard holds whole heads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from torch import nn

from dsl_scale.core import counter_rng
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
        index: int = 0,
    ):
        super().__init__()
        self.index = index  # the block's number in the whole network: a key word of its dropout masks
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
                  lanes: torch.Tensor | None, site: int) -> torch.Tensor:
        if lanes is not None and self.training and self.dropout > 0:
            rank = parallel_state.get_tensor_model_parallel_rank() if self.sequence_parallel else 0
            seq, _, hidden = branch.shape
            salt = counter_rng.draw_salt(site_draw(self.index, site))
            keep = self.keep_scale(branch, self.dropout, lanes, salt, rank * seq * hidden)
            return self.dropped_residual(skip, gate, branch, keep)
        if self.training and self.dropout > 0:
            return self.gated_residual(skip, gate, F.dropout(branch, p=self.dropout))
        return self.gated_residual(skip, gate, branch)

    @staticmethod
    def keep_scale(x: torch.Tensor, p: float, lanes: torch.Tensor, salt: int, start: int) -> torch.Tensor:
        """`keep_from_lanes` (a method so that parallel/compile.py can fuse each site's mask into one kernel)."""
        return keep_from_lanes(x, p, lanes, salt, start)

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
                dropout_lanes: torch.Tensor | None = None):
        """x: [s, b, H]; cond: [b, C]; cos, sin: Rotary.cos_sin's. `dropout_lanes` (int64 [2, b], the sequences'
        dropout keys, `dropout_lanes(seeds)`): seeded masks, one counter-RNG draw per site of this block (see
        `seeded_keep_scale`); without them, F.dropout from the global generator. The branches, masks and
        residuals are methods so that parallel/compile.py can compile them."""
        mods = self.adaLN_modulation(cond)[None].chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = self._residual(self.attention_branch(x, shift_msa, scale_msa, cos, sin), gate_msa, x, dropout_lanes, 0)
        return self._residual(self.mlp_branch(x, shift_mlp, scale_mlp), gate_mlp, x, dropout_lanes, 1)


DROPOUT_SITES = 2  # per block: after attention (0) and after the MLP (1)


def site_draw(block: int, site: int) -> int:
    """The counter-RNG draw id of a dropout site: each site is its own draw of the sequence's key."""
    return DROPOUT_SITES * block + site


def dropout_lanes(seeds: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    """The counter-RNG key of each sequence's dropout, from its seed: int64 [2, b] on `device` (a fixed handful of
    [b]-sized kernels, once per forward)."""
    seeds = torch.as_tensor(seeds, dtype=torch.long).to(device, non_blocking=True)
    key = counter_rng.key(seeds, device)
    return torch.stack([key.a, key.b])


def keep_from_lanes(x: torch.Tensor, p: float, lanes: torch.Tensor, salt: int, start: int = 0) -> torch.Tensor:
    """The dropout multiplier for x [s, b, H] from the sequences' keys `lanes` [2, b] and a site's draw salt
    (counter_rng.draw_salt): element (s, b, h) is 1 / (1 − p) where the uniform of counter start + s·H + h of row
    b's draw is ≥ p, else 0. Pure integer arithmetic, laid out as x is: one fused kernel under torch.compile."""
    seq, batch, hidden = x.shape
    counters = torch.arange(start, start + seq * hidden, dtype=torch.long, device=x.device).view(seq, 1, hidden)
    a, b = lanes.view(2, 1, batch, 1).unbind(0)
    u = counter_rng.uniform_from_bits(counter_rng.hash_bits(counters, a, b, salt))
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return (u >= p).to(x.dtype) * scale


def seeded_keep_scale(x: torch.Tensor, p: float, seeds: torch.Tensor | Sequence[int], shard: tuple[int, int] = (0, 1),
                      draw: int = 0) -> torch.Tensor:
    """The dropout multiplier for x [s, b, H]: row b is 1 / (1 − p) where U ≥ p, else 0, with U draw `draw` of the
    counter-based generator (core/counter_rng.py) keyed by seeds[b], at each element's place in the whole
    [s · shards, H] sequence (x is the `shard`th of `shards` equal parts of it under sequence parallelism). A pure
    function of the row's seed and the draw (`site_draw(block, site)` in the model): the same in any batch,
    micro-batch, layout or activation recomputation, drawn on x's device with no generator or host read. In x's
    dtype, [s, b, H]."""
    rank, _ = shard
    seq, batch, hidden = x.shape
    if torch.as_tensor(seeds).shape != (batch,):
        raise ValueError(f"{torch.as_tensor(seeds).numel()} dropout seeds for a batch of {batch}")
    return keep_from_lanes(x, p, dropout_lanes(seeds, x.device), counter_rng.draw_salt(draw), rank * seq * hidden)


def seeded_dropout(x: torch.Tensor, p: float, seeds: torch.Tensor | Sequence[int], shard: tuple[int, int] = (0, 1),
                   draw: int = 0) -> torch.Tensor:
    """Dropout of x [s, b, H] with `seeded_keep_scale`'s mask, scaled like F.dropout."""
    return x * seeded_keep_scale(x, p, seeds, shard, draw)


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
