"""Run under torchrun with 4 ranks (TP 2 × PP 2): each rank builds only its own stage's shards, allocating
less than the whole network while doing so, and every shard equals its slice of the TP = 1, PP = 1 network
built from the same seed; the ranks together hold every parameter. The DSL converter is included: its
[MASK] row lives in TP rank 1's shard of the embedding, and TP rank 0 must get it without a collective."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dsl_scale.config import ModelConfig, ObjectiveConfig
from dsl_scale.model.factory import build_dit
from dsl_scale.parallel import cpu_compat

# hidden 256: each TP shard spans whole 64-index blocks, so a rank draws no more than its shard
MODEL = ModelConfig(hidden=256, n_blocks=4, n_heads=4, cond_dim=16)
VOCAB, MASK_ID, SEED = 512, 511, 9
DSL = ObjectiveConfig("dsl", key_dim=8)


class AllocatedBytes(TorchDispatchMode):
    """Bytes of every new tensor storage an op creates (views and in-place results excluded): an upper bound
    of what the process held at any moment."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.total += tensor.untyped_storage().nbytes()
        return out


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


if __name__ == "__main__":
    cpu_compat.install()
    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    stage = parallel_state.get_pipeline_model_parallel_rank()
    with AllocatedBytes() as allocated:
        sharded = build_dit(MODEL, VOCAB, seed=SEED, tp=2, pp=2, stage=stage, objective=DSL, mask_id=MASK_ID)
    held = nbytes(sharded.parameters())
    parallel_state.destroy_model_parallel()

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    whole = dict(build_dit(MODEL, VOCAB, seed=SEED, objective=DSL, mask_id=MASK_ID).named_parameters())
    whole_bytes = nbytes(whole.values())
    checked = 0
    for name, shard in sharded.named_parameters():
        expected = whole[name]
        if getattr(shard, "tensor_model_parallel", False):
            expected = expected.chunk(2, dim=shard.partition_dim)[tp_rank]
            checked += 1
        assert shard.shape == expected.shape, (name, shard.shape, expected.shape)
        assert torch.equal(shard, expected), name
    blocks = {int(name.split(".")[1]) for name, _ in sharded.named_parameters() if name.startswith("blocks.")}
    assert blocks == {2 * stage, 2 * stage + 1}, blocks
    # the old build (every stage, each sharded weight whole on every rank) allocated more than the network
    assert allocated.total < 0.75 * whole_bytes, (allocated.total, whole_bytes)
    assert allocated.total < 2.5 * held, (allocated.total, held)
    names = [None] * dist.get_world_size()
    dist.all_gather_object(names, [name for name, _ in sharded.named_parameters()])
    assert {n for rank_names in names for n in rank_names} == set(whole), "some parameter is held by no rank"
    print(f"rank {dist.get_rank()} (stage {stage}, tp rank {tp_rank}): {checked} shards equal their TP1/PP1 "
          f"slices; allocated {allocated.total / whole_bytes:.2f} of the network while building its stage", flush=True)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
