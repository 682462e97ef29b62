"""DSL under tensor parallelism: two real gloo processes, TP = 2 against TP = 1 in the same processes.

Each rank first computes the TP = 1 reference (megatron groups of size 1), then rebuilds the groups with
TP = 2 and loads the matching shards of the same weights: converter output, its gradients, and the
whole DSL loss through a micro DiT must agree to 1e-5.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.distributed

VOCAB, MASK_ID, HIDDEN, KEY_DIM = 64, 63, 16, 8
TOL = {"rtol": 1e-5, "atol": 1e-5}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shard(full: torch.Tensor, param: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    """This rank's slice of a TP = 1 tensor, read from megatron's partition attributes."""
    if not getattr(param, "tensor_model_parallel", False) or tp == 1:
        return full
    return full.chunk(tp, dim=param.partition_dim)[rank]


def build(tp: int, full_state: dict[str, torch.Tensor] | None):
    from megatron.core import ModelParallelConfig, parallel_state

    from dsl_scale.model import DiT, DiTConfig
    from dsl_scale.model.converter import Converter

    cfg = DiTConfig(vocab_size=VOCAB, hidden=HIDDEN, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0)
    model = DiT(cfg, ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True))
    conv = Converter(VOCAB, HIDDEN, key_dim=KEY_DIM, key_seed=5)
    modules = torch.nn.ModuleDict({"dit": model, "conv": conv})
    rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        if full_state is None:  # the TP = 1 reference: random everywhere, so every path carries gradient
            g = gen(0)
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            conv.init_from_embedding(model.vocab_embed.weight, model.vocab_embed.weight[MASK_ID])
            conv.token_bias.copy_(torch.randn(VOCAB, generator=g))
            conv.beta.fill_(1.4)
            conv.out_bias.copy_(torch.randn(HIDDEN, generator=g) * 0.1)
        else:
            for name, p in modules.named_parameters():
                p.copy_(shard(full_state[name], p, rank, tp))
            # init_from_embedding at TP = 2 must reproduce the reference's W (the [MASK] row lives on rank 1's
            # shard; every rank gets it from the whole table)
            mask_weight = conv.mask_weight.clone()
            conv.init_from_embedding(model.vocab_embed.weight, full_state["dit.vocab_embed.weight"][MASK_ID])
            torch.testing.assert_close(conv.mask_weight, mask_weight, rtol=0, atol=0)
    return modules


def run(tp: int, full_state=None) -> dict[str, torch.Tensor]:
    from dsl_scale.diffusion import dsl, mdlm
    from dsl_scale.model import DiT
    from dsl_scale.model.converter import mix_inputs

    modules = build(tp, full_state)
    model, conv = modules["dit"], modules["conv"]
    out = {name: p.detach().clone() for name, p in modules.named_parameters()}

    # the converter alone, with a gradient on z
    z = (torch.randn(3, 5, KEY_DIM, generator=gen(1)) * 5).requires_grad_()
    h = conv(z)
    (h * torch.randn(h.shape, generator=gen(2))).sum().backward()
    out["h"], out["z.grad"] = h.detach(), z.grad
    for name, p in conv.named_parameters():
        out[f"conv.{name}.grad"] = p.grad.clone()
    modules.zero_grad()

    # the DSL loss through the DiT
    tokens = torch.randint(0, MASK_ID, (4, 12), generator=gen(3))
    batch = dsl.corrupt(tokens, conv.keys, dsl.SNRSchedule(mdlm_fraction=0.3, p_roar=0.5), MASK_ID,
                        torch.arange(10, 14))
    logits = model(None, input_embeds=mix_inputs(conv, model.vocab_embed, batch.ids, batch.z, batch.discrete))
    mdlm.suppress_mask_logit_(logits, MASK_ID, model.vocab_range[0])
    loss = dsl.dsl_loss(DiT.token_nll(logits, tokens))
    loss.backward()
    out["loss"] = loss.detach()
    for name, p in modules.named_parameters():
        out[f"{name}.loss_grad"] = p.grad.clone()
    out["params"] = modules
    return out


def worker(rank: int, world: int, port: int) -> None:
    from megatron.core import parallel_state

    from dsl_scale.parallel import cpu_compat

    cpu_compat.install()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    parallel_state.initialize_model_parallel(1, 1)
    ref = run(1)
    full_state = {name: p.detach() for name, p in ref.pop("params").named_parameters()}
    parallel_state.destroy_model_parallel()

    parallel_state.initialize_model_parallel(2, 1)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    got = run(2, full_state)
    params = dict(got.pop("params").named_parameters())
    conv = params["conv.token_weight"]
    assert conv.shape == (VOCAB // 2, HIDDEN), "each rank holds half of the token slots"
    for key, value in got.items():
        base = key.removesuffix(".loss_grad").removesuffix(".grad")
        expected = ref[key]
        if base in params:
            expected = shard(expected, params[base], tp_rank, 2)
        torch.testing.assert_close(value, expected, **TOL, msg=lambda m, k=key: f"{k}: {m}")
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def test_converter_and_dsl_loss_at_tp2_equal_tp1():
    from dsl_scale.parallel.topology import free_port

    mp.spawn(worker, args=(2, free_port()), nprocs=2, join=True)


def build_dsl_dit(tp: int):
    from dsl_scale.config import ModelConfig, ObjectiveConfig
    from dsl_scale.model.factory import build_dit

    model = ModelConfig(hidden=HIDDEN, n_blocks=1, n_heads=2, cond_dim=8)
    return build_dit(model, VOCAB, seed=3, tp=tp, objective=ObjectiveConfig("dsl", key_dim=KEY_DIM), mask_id=MASK_ID)


def staggered_worker(rank: int, world: int, port: int) -> None:
    """TP = 2 ranks build their DSL DiT one after the other: a collective inside DiT.__init__ (which would
    also run while the model is still on the CPU, before it reaches its GPU) cannot complete then, and the
    short group timeouts turn it into an error. Each rank's converter must equal its slice of TP = 1's."""
    from megatron.core import parallel_state

    timeout_s = 15
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    parallel_state.initialize_model_parallel(1, 1, distributed_timeout_minutes=timeout_s / 60)
    whole = dict(build_dsl_dit(1).named_parameters())
    parallel_state.destroy_model_parallel()

    parallel_state.initialize_model_parallel(2, 1, distributed_timeout_minutes=timeout_s / 60)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for builder in range(world):
        if builder == rank:
            sharded = build_dsl_dit(2)
        dist.barrier()
    checked = []
    for name, param in sharded.named_parameters():
        if name.startswith(("converter.", "vocab_embed.")):
            torch.testing.assert_close(param, shard(whole[name], param, tp_rank, 2), rtol=0, atol=0,
                                       msg=lambda m, n=name: f"{n}: {m}")
            checked.append(name)
    assert "converter.mask_weight" in checked and "converter.token_weight" in checked, checked
    assert whole["converter.mask_weight"].abs().sum() > 0  # the [MASK] row of the embedding, not zeros
    torch.testing.assert_close(whole["converter.mask_weight"], whole["vocab_embed.weight"][MASK_ID], rtol=0, atol=0)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def test_dsl_dit_at_tp2_initialises_its_converter_without_collectives_as_tp1_does():
    from dsl_scale.parallel.topology import free_port

    mp.spawn(staggered_worker, args=(2, free_port()), nprocs=2, join=True)
