"""The chunked vocab-parallel cross-entropy under tensor parallelism: two real gloo processes, TP = 2 against
TP = 1 in the same processes (as test_dsl_tp.py does). Each objective's loss through a micro DiT, with the
[MASK] id in rank 1's half of the vocabulary and chunks that split sequences, must give TP = 1's loss and each
rank the matching shard of TP = 1's gradients; and the chunked loss must equal the whole-batch fp32 path at
TP = 2 as well.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.distributed

VOCAB, MASK_ID, HIDDEN = 64, 63, 16
TOL = {"rtol": 1e-5, "atol": 1e-6}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shard(full: torch.Tensor, param: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False) or tp == 1:
        return full
    return full.chunk(tp, dim=param.partition_dim)[rank]


def build(tp: int, full_state: dict[str, torch.Tensor] | None, causal: bool):
    from megatron.core import ModelParallelConfig, parallel_state

    from dsl_scale.model import DiT, DiTConfig

    cfg = DiTConfig(vocab_size=VOCAB, hidden=HIDDEN, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0,
                    mask_id=MASK_ID, causal=causal)
    model = DiT(cfg, ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True))
    rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen(i)) * 0.3 if full_state is None
                    else shard(full_state[name], p, rank, tp))
    return model


def batches():
    from dsl_scale.core.batch import Prepared

    g = gen(7)
    tokens = torch.randint(0, MASK_ID, (3, 10), generator=g)
    t = torch.rand(3, generator=g)
    masked = torch.rand(3, 10, generator=g) < t[:, None]
    return {
        "mdlm": Prepared(torch.where(masked, MASK_ID, tokens), tokens, t, {"masked": masked, "t": t}),
        "ar": Prepared(tokens[:, :-1], tokens[:, 1:]),
        "dsl": Prepared(tokens, tokens),
    }


def objective(name: str):
    from dsl_scale.diffusion.objectives import AutoregressiveObjective, DSLObjective, MDLMObjective

    if name == "mdlm":
        return MDLMObjective(MASK_ID, 1e-3, 0)
    if name == "ar":
        return AutoregressiveObjective(MASK_ID)
    dsl_objective = DSLObjective.__new__(DSLObjective)  # the loss half only reads mask_id
    dsl_objective.mask_id = MASK_ID
    return dsl_objective


def run(tp: int, name: str, nll_fn, full_state=None) -> dict[str, torch.Tensor]:
    model = build(tp, full_state, causal=name == "ar")
    batch = batches()[name]
    loss = objective(name).loss(model(batch.inputs, batch.sigma), batch, nll_fn, model.vocab_range[0])
    loss.backward()
    out = {"loss": loss.detach()}
    out.update({f"{n}.grad": p.grad.clone() for n, p in model.named_parameters()})
    out["params"] = model
    return out


def worker(rank: int, world: int, port: int) -> None:
    from megatron.core import parallel_state

    from dsl_scale.model import DiT
    from dsl_scale.parallel import cpu_compat
    from dsl_scale.parallel.cross_entropy import nll_function

    cpu_compat.install()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    chunked = nll_function(4)  # 4 tokens: chunks cut across the sequences
    names = ("mdlm", "ar", "dsl")
    parallel_state.initialize_model_parallel(1, 1)
    refs = {name: run(1, name, chunked) for name in names}
    parallel_state.destroy_model_parallel()

    parallel_state.initialize_model_parallel(2, 1)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for name, ref in refs.items():
        full_state = {n: p.detach() for n, p in ref.pop("params").named_parameters()}
        got = run(2, name, chunked, full_state)
        whole_batch = run(2, name, DiT.token_nll, full_state)  # megatron's fp32 cross-entropy at TP = 2
        params = dict(got.pop("params").named_parameters())
        whole_batch.pop("params")
        assert params["output_layer.linear.weight"].shape[0] == VOCAB // 2
        for key, value in got.items():
            base = key.removesuffix(".grad")
            expected = shard(ref[key], params[base], tp_rank, 2) if base in params else ref[key]
            torch.testing.assert_close(value, expected, **TOL, msg=lambda m, k=f"{name} {key}": f"{k} vs TP=1: {m}")
            torch.testing.assert_close(value, whole_batch[key], **TOL,
                                       msg=lambda m, k=f"{name} {key}": f"{k} vs unchunked: {m}")
        assert got["output_layer.linear.weight.grad"].abs().sum() > 0
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def test_chunked_loss_at_tp2_equals_tp1_for_every_objective():
    from dsl_scale.parallel.topology import free_port

    mp.spawn(worker, args=(2, free_port()), nprocs=2, join=True)
