"""Run under torchrun with 2 ranks: each TP shard of every parallel layer equals the matching slice
of the TP=1 weight built from the same seed (megatron-core's idiom)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from dsl_scale.config import ModelConfig
from dsl_scale.model.factory import build_dit

MODEL = ModelConfig(hidden=32, n_blocks=2, n_heads=4, cond_dim=16)

if __name__ == "__main__":
    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    rank = parallel_state.get_tensor_model_parallel_rank()
    sharded = build_dit(MODEL, vocab_size=98, seed=5, tp=2)
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    whole = dict(build_dit(MODEL, vocab_size=98, seed=5, tp=1).named_parameters())
    checked = 0
    for name, shard in sharded.named_parameters():
        full = whole[name]
        if getattr(shard, "tensor_model_parallel", False):
            dim = shard.partition_dim
            expected = full.chunk(2, dim=dim)[rank]
            checked += 1
        else:
            expected = full
        assert shard.shape == expected.shape, (name, shard.shape, expected.shape)
        assert torch.equal(shard, expected), name
    assert checked >= 4 * 2 + 2, checked  # qkv, out, fc1, fc2 per block + embedding + output layer
    print(f"rank {rank}: {checked} tensor-parallel shards equal their TP=1 slices")
