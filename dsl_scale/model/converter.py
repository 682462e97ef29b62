"""DSL's converter from a localization observation z to the backbone's input embedding (docs/method.md §4).

p = softmax(β·z·Kextᵀ + b) over V token slots and one all-zero "mask slot", in fp32; h = W·p + c.
Here W is stored row-wise like an embedding table: `token_weight` [V, H] (W's token columns) and
`mask_weight` [H] (its mask-slot column).

Tensor parallelism mirrors megatron's VocabParallelEmbedding: TP rank r holds the token slots
[vocab_start, vocab_end) of b and W and uses those rows of K; the mask slot (b_mask, W_mask) and β, c
are replicated. Each rank computes e_v = exp(l_v − m) for its slots only (m: the global max, gathered
from every rank's maximum, no gradient), and the replicated result
    h = c + (Σ_ranks Σ_local e_v W_v + e_mask W_mask) / (Σ_ranks Σ_local e_v + e_mask)
is formed from two all-reduced partial sums (numerator [.., H], denominator [.., 1]); no rank ever
holds [B, L, V] at TP > 1. The partial sums are reduced with megatron's reduce_from region (backward:
identity, since everything downstream is replicated) and β·z enters through the copy_to region
(backward: all-reduce of the per-rank partial gradients).
"""

from __future__ import annotations

import math

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    set_tensor_model_parallel_attributes,
)
from torch import nn

from dsl_scale.diffusion.dsl import token_keys


def _tp_group():
    """The TP group from megatron-core's parallel_state, or None (one rank) before it is initialised."""
    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None


class Converter(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, key_dim: int = 48, key_seed: int = 0,
                 beta_init: float = 1.0):
        super().__init__()
        group = _tp_group()
        self.tp_group = group if group is not None and group.size() > 1 else None
        tp = group.size() if group is not None else 1
        rank = group.rank() if group is not None else 0
        if vocab_size % tp:
            raise ValueError(f"vocab size {vocab_size} is not divisible by parallel.tp={tp}")
        per_rank = vocab_size // tp
        self.vocab_size = vocab_size
        self.vocab_start, self.vocab_end = rank * per_rank, (rank + 1) * per_rank
        # The full K on every rank (V·d floats): the channel and the samplers need K_x for any token.
        self.register_buffer("keys", token_keys(vocab_size, key_dim, key_seed), persistent=True)
        self.token_weight = nn.Parameter(torch.zeros(per_rank, hidden))
        self.token_bias = nn.Parameter(torch.zeros(per_rank))
        for param in (self.token_weight, self.token_bias):
            set_tensor_model_parallel_attributes(param, is_parallel=True, dim=0, stride=1)
        self.mask_weight = nn.Parameter(torch.zeros(hidden))
        # shape [1], not scalars: DeepSpeed's flattening cannot handle 0-dim parameters
        self.mask_bias = nn.Parameter(torch.tensor([math.log(vocab_size)]))
        self.beta = nn.Parameter(torch.tensor([float(beta_init)]))
        self.out_bias = nn.Parameter(torch.zeros(hidden))

    def _apply(self, fn, recurse=True):
        # Keep K in fp32 whatever the module is cast to (bf16 keys would no longer be unit-norm).
        keys = self.keys
        super()._apply(fn, recurse)
        self.keys = keys.to(self.keys.device)
        return self

    @torch.no_grad()
    def init_from_embedding(self, embedding_weight_shard: torch.Tensor, mask_row: torch.Tensor) -> None:
        """W ← the backbone's embedding rows (this rank's shard [V/tp, H]) and the whole table's [MASK] row
        [H] (at TP > 1 another rank may hold it: the caller, which has the whole table, passes it)."""
        if embedding_weight_shard.shape != self.token_weight.shape:
            raise ValueError(f"embedding shard {tuple(embedding_weight_shard.shape)} does not match the "
                             f"converter's {tuple(self.token_weight.shape)}")
        if mask_row.shape != self.mask_weight.shape:
            raise ValueError(f"[MASK] row {tuple(mask_row.shape)} does not match the converter's "
                             f"{tuple(self.mask_weight.shape)}")
        self.token_weight.copy_(embedding_weight_shard)
        self.mask_weight.copy_(mask_row)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.tp_group is None else reduce_from_tensor_model_parallel_region(x, self.tp_group)

    def _scores(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(e_local [.., V/tp], e_mask [.., 1], all-ranks denominator [.., 1]), all fp32."""
        u = self.beta.float() * z.float()
        if self.tp_group is not None:
            u = copy_to_tensor_model_parallel_region(u, self.tp_group)
        keys = self.keys[self.vocab_start:self.vocab_end].float()
        logits = u @ keys.T + self.token_bias.float()
        mask_logit = self.mask_bias.float().expand(*logits.shape[:-1], 1)
        shift = torch.maximum(logits.detach().amax(-1, keepdim=True), mask_logit.detach())
        if self.tp_group is not None:  # one shift for the whole row: each rank's maximum, gathered
            shift = gather_from_tensor_model_parallel_region(shift, self.tp_group).amax(-1, keepdim=True)
        e_local = torch.exp(logits - shift)
        e_mask = torch.exp(mask_logit - shift)
        total = self._reduce(e_local.sum(-1, keepdim=True)) + e_mask
        return e_local, e_mask, total

    def slot_probs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p over this rank's token slots [.., V/tp] and over the mask slot [.., 1] (fp32)."""
        e_local, e_mask, total = self._scores(z)
        return e_local / total, e_mask / total

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [.., d] → h [.., H] in the parameters' dtype."""
        e_local, e_mask, total = self._scores(z)
        weight = self.token_weight
        numerator = self._reduce((e_local.to(weight.dtype) @ weight).float())
        h = (numerator + e_mask * self.mask_weight.float()) / total + self.out_bias.float()
        return h.to(weight.dtype)


def mix_inputs(converter: Converter, embedding: nn.Module, ids: torch.Tensor, z: torch.Tensor,
               discrete: torch.Tensor) -> torch.Tensor:
    """The backbone input [b, L, H]: embedding(ids) at discrete positions, converter(z) elsewhere.

    Both paths run on every position (simple, and the same collectives on every TP rank).
    """
    from_table = embedding(ids)
    from_z = converter(z).to(from_table.dtype)
    return torch.where(discrete[..., None], from_table, from_z)
