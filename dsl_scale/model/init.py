"""Layout-independent initialisation: each rank draws only the part of each parameter it holds.

A parameter's value is a function of (seed, its global name, position in the whole tensor): the whole
tensor is cut along its tensor-parallel dimension into blocks of BLOCK indices, and block k is drawn
from a generator seeded by (seed, name, k). A rank draws the blocks its shard overlaps and keeps its
part, so it never holds more than its shard plus two blocks, builds no other pipeline stage, and gets
the same numbers at every TP × PP layout. Names are global (`blocks.<i>` counts blocks in the whole
network), so a block's weights do not depend on which stage holds it.

The distributions are the ones the modules would draw themselves (torch.nn.Linear's and megatron's
CPU initialisation with our init methods): U(−1/√fan_in, 1/√fan_in) for weights and the noise map's
biases, zeros for the adaLN maps, the output layer and megatron's biases, ones for LayerNorm weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn

BLOCK = 64  # indices of the partition dimension per independently seeded block (a fixed size: layout-free)

FAN_IN_UNIFORM, ZEROS, ONES, AS_BUILT, FROM_EMBEDDING = "fan_in_uniform", "zeros", "ones", "as_built", "embedding"
# Every parameter of a DiT matches exactly one pattern (full match). AS_BUILT: a constant the module sets
# itself (no random draws); FROM_EMBEDDING: DSL's converter, copied from the token embedding afterwards.
RULES: list[tuple[str, str]] = [
    (r"vocab_embed\.weight", FAN_IN_UNIFORM),
    (r"sigma_map\.mlp\.[02]\.(weight|bias)", FAN_IN_UNIFORM),
    (r"blocks\.\d+\.(attn_qkv|attn_out|mlp_fc1|mlp_fc2)\.weight", FAN_IN_UNIFORM),
    (r"blocks\.\d+\.mlp_fc[12]\.bias", ZEROS),
    (r"(blocks\.\d+|output_layer)\.adaLN_modulation\.(weight|bias)", ZEROS),
    (r"output_layer\.linear\.(weight|bias)", ZEROS),
    (r"(blocks\.\d+\.norm[12]|output_layer\.norm_final)\.weight", ONES),
    (r"converter\.(token_bias|out_bias)", ZEROS),
    (r"converter\.(mask_bias|beta)", AS_BUILT),
    (r"converter\.(token_weight|mask_weight)", FROM_EMBEDDING),
]


def rule_for(name: str) -> str:
    matches = [rule for pattern, rule in RULES if re.fullmatch(pattern, name)]
    if len(matches) != 1:
        raise ValueError(f"parameter {name!r} matches {len(matches)} initialisation rules in model/init.py "
                         "(it needs exactly one): declare how it is initialised there")
    return matches[0]


def mark_megatron_shards(module: nn.Module) -> None:
    """The tensor-parallel attributes megatron sets on its weights only when it initialises them itself
    (perform_initialization=True): partition dim 0 for the embedding and column-parallel layers, 1 for
    row-parallel ones."""
    for layer in module.modules():
        if isinstance(layer, (VocabParallelEmbedding, ColumnParallelLinear)):
            dim = 0
        elif isinstance(layer, RowParallelLinear):
            dim = 1
        else:
            continue
        if not hasattr(layer.weight, "tensor_model_parallel"):
            set_tensor_model_parallel_attributes(layer.weight, is_parallel=True, dim=dim, stride=1)


def block_seed(seed: int, name: str, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: any torch.Generator accepts it


def fill_uniform_(out: torch.Tensor, name: str, full_shape: tuple[int, ...], dim: int, start: int,
                  bound: float, seed: int) -> torch.Tensor:
    """Write indices [start, start + out.shape[dim]) along `dim` of the whole tensor `name` (of shape
    `full_shape`, U(−bound, bound) drawn block by block) into `out`."""
    length = out.shape[dim]
    for block in range(start // BLOCK, (start + length - 1) // BLOCK + 1):
        low, high = block * BLOCK, min((block + 1) * BLOCK, full_shape[dim])
        shape = list(full_shape)
        shape[dim] = high - low
        generator = torch.Generator().manual_seed(block_seed(seed, name, block))
        values = torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        keep_low, keep_high = max(low, start), min(high, start + length)
        out.narrow(dim, keep_low - start, keep_high - keep_low).copy_(
            values.narrow(dim, keep_low - low, keep_high - keep_low))
    return out


# Makes a list of parameters whole for the duration (writes included): ZeRO-3's gathering, or nothing.
Whole = Callable[[list[nn.Parameter]], AbstractContextManager]


def as_is(params: list[nn.Parameter]) -> AbstractContextManager:
    return contextlib.nullcontext()


def local_shape(param: torch.Tensor) -> tuple[int, ...]:
    """This rank's TP shard's shape, also while ZeRO-3 keeps only a partition of it (DeepSpeed's `ds_shape`)."""
    return tuple(getattr(param, "ds_shape", param.shape))


def shard_of(param: torch.Tensor, tp: int, tp_rank: int) -> tuple[tuple[int, ...], int, int]:
    """(the whole tensor's shape, the partition dim, this shard's first index along it). The blocks run along
    the partition dim at every TP size, 1 included, so that a shard's draws are the same at any TP."""
    shape = local_shape(param)
    if not getattr(param, "tensor_model_parallel", False):
        return shape, 0, 0
    dim = param.partition_dim
    full = list(shape)
    full[dim] *= tp
    return tuple(full), dim, tp_rank * shape[dim]


def fan_in(name: str, full_shapes: dict[str, tuple[int, ...]]) -> int:
    """A weight's input size; a bias takes its layer's (torch.nn.Linear's rule)."""
    weight = name.removesuffix(".bias") + ".weight" if name.endswith(".bias") else name
    return full_shapes[weight][1]


@torch.no_grad()
def initialize(module: nn.Module, seed: int, tp: int = 1, whole: Whole = as_is) -> None:
    """Initialise every parameter of a DiT stage built without initialisation (megatron's
    perform_initialization=False), this rank's shard only, one parameter at a time, each made `whole` while
    it is written (ZeRO-3: O(largest parameter) gathered at once). DSL's converter is left to the caller (it
    copies the embedding: see `embedding_rows`)."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank() if tp > 1 else 0
    mark_megatron_shards(module)
    params = dict(module.named_parameters())
    rules = {name: rule_for(name) for name in params}  # every name checked before any work
    shards = {name: shard_of(param, tp, tp_rank) for name, param in params.items()}
    full_shapes = {name: shard[0] for name, shard in shards.items()}
    for name, param in params.items():
        rule = rules[name]
        if rule in (AS_BUILT, FROM_EMBEDDING):
            continue
        with whole([param]):
            if rule == FAN_IN_UNIFORM:
                full_shape, dim, start = shards[name]
                bound = 1 / math.sqrt(fan_in(name, full_shapes))
                fill_uniform_(param.data, name, full_shape, dim, start, bound, seed)
            elif rule == ZEROS:
                param.zero_()
            elif rule == ONES:
                param.fill_(1.0)


def embedding_rows(seed: int, vocab_size: int, hidden: int, start: int, count: int = 1) -> torch.Tensor:
    """Rows [start, start + count) of the whole token-embedding table as `initialize` draws it, on any rank
    (DSL's converter needs the [MASK] row, which another TP rank's shard may hold)."""
    out = torch.empty(count, hidden, dtype=torch.float32)
    return fill_uniform_(out, "vocab_embed.weight", (vocab_size, hidden), 0, start, 1 / math.sqrt(hidden), seed)
