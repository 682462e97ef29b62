"""Run under torchrun with 2 ranks: with sequence parallelism at TP=2, the loss and every gradient of
the DiT equal those of the same network at TP=1 (random weights everywhere, so no path is zero)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from dsl_scale.config import ModelConfig
from dsl_scale.model.factory import build_dit
from dsl_scale.parallel import cpu_compat
from dsl_scale.parallel.engine import sum_sequence_parallel_grads

MODEL = ModelConfig(hidden=32, n_blocks=2, n_heads=4, cond_dim=16, dropout=0.0)
VOCAB = 98


def randomise(model: torch.nn.Module, tp_rank: int, tp: int) -> None:
    """The same random full weights at any TP size: draw full, keep this rank's slice."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            shape = list(p.shape)
            if getattr(p, "tensor_model_parallel", False):
                shape[p.partition_dim] *= tp
            full = torch.randn(shape, generator=g) * 0.2
            if getattr(p, "tensor_model_parallel", False):
                full = full.chunk(tp, dim=p.partition_dim)[tp_rank]
            p.copy_(full)


def loss_and_grads(tp: int, sequence_parallel: bool):
    model = build_dit(MODEL, VOCAB, seed=1, tp=tp, sequence_parallel=sequence_parallel)
    rank = parallel_state.get_tensor_model_parallel_rank()
    randomise(model, rank, tp)
    if sequence_parallel:
        sum_sequence_parallel_grads(model)
    tokens = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(3))
    loss = type(model).token_nll(model(tokens, torch.zeros(3)), tokens).mean()
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad
        if getattr(p, "tensor_model_parallel", False) and tp > 1:
            pieces = [torch.empty_like(grad) for _ in range(tp)]
            dist.all_gather(pieces, grad.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
            grad = torch.cat(pieces, dim=p.partition_dim)
        grads[name] = grad
    return loss.detach(), grads


if __name__ == "__main__":
    dist.init_process_group("gloo")
    cpu_compat.install()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    loss2, grads2 = loss_and_grads(2, sequence_parallel=True)
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    loss1, grads1 = loss_and_grads(1, sequence_parallel=False)
    torch.testing.assert_close(loss2, loss1, rtol=1e-6, atol=1e-6)
    for name, grad in grads1.items():
        torch.testing.assert_close(grads2[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    print(f"sequence parallel: loss and {len(grads1)} gradients equal TP=1")
