"""Run under torchrun with 2 ranks: a TP2 DiT of 12 blocks, compiled with Dynamo's eager backend, trained at three
batch sizes with seeded dropout; prints this rank's graph and graph-break counts as `GRAPHS {json}`."""

from __future__ import annotations

import json

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from dsl_scale.model import DiT, DiTConfig
from dsl_scale.parallel import cpu_compat
from dsl_scale.parallel.compile import compile_blocks
from dsl_scale.parallel.topology import init_process_groups

CFG = DiTConfig(vocab_size=40, hidden=32, n_blocks=12, n_heads=4, cond_dim=16, dropout=0.1, mask_id=39)

if __name__ == "__main__":
    cpu_compat.install()
    topo = init_process_groups(tp=2, backend="gloo")
    cpu_compat.seed_parallel_rng(0, topo.tp_rank)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    from megatron.core import ModelParallelConfig

    model = DiT(CFG, ModelParallelConfig(tensor_model_parallel_size=2, use_cpu_initialization=True)).train()
    compile_blocks(model, backend="eager")
    generator = torch.Generator().manual_seed(0)  # the same tokens on both ranks (TP ranks share a batch)
    for batch in (2, 3, 5):
        tokens = torch.randint(0, 39, (batch, 16), generator=generator)
        model(tokens, dropout_seeds=torch.arange(batch)).float().sum().backward()
    print("GRAPHS " + json.dumps({"rank": topo.rank, "graphs": counters["stats"]["unique_graphs"],
                                  "breaks": sum(counters["graph_break"].values()),
                                  "reasons": sorted({k.splitlines()[0] for k in counters["graph_break"]})}),
          flush=True)
