"""Run under torchrun (gloo) with the ZeRO stages to check as arguments: for each, a tiny bf16 model goes through
dsl_scale's engine (build_engine, engine.step) for one optimizer step over many micro-batches, and one JSON line
`RESULT {...}` reports, against an fp64 reference of the same step, the gradient norm and the fp32 master
weights, then whether the EMA and the final weights come from the masters, for test_bf16_numerics.py.

The per-micro-batch gradients are exact in bf16 (one example, values with 8 significant bits, the loss divided
by a power of two), so only the accumulation over micro-batches and the reduction over ranks round: in bf16
the sum of 64 of them is off by ~1e-3, in fp32 by ~1e-7.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile

import torch
import torch.distributed as dist

ACCUMULATION = 64
WIDTHS = (24, 7)  # two parameters, one of odd size (ZeRO's flat groups and partitions get padding)
LR, EPS, CLIP, DECAY, BETAS = 1.0, 1.0, 1.0, 0.5, (0.9, 0.999)


class Tiny(torch.nn.Module):
    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.a = torch.nn.Parameter(_bf16_exact(torch.randn(WIDTHS[0], generator=generator, device="cpu")))
        self.b = torch.nn.Parameter(_bf16_exact(torch.randn(WIDTHS[1], generator=generator, device="cpu")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, : WIDTHS[0]], x[:, WIDTHS[0]:]
        return (a * self.a).sum() + (b * self.b).sum()


def _bf16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def inputs(rank: int) -> torch.Tensor:
    """[ACCUMULATION, sum(WIDTHS)] values in [0.2, 0.5) with 8 significant bits: rank `rank`'s micro-batches."""
    generator = torch.Generator(device="cpu").manual_seed(1000 + rank)
    return _bf16_exact(0.2 + 0.3 * torch.rand(ACCUMULATION, sum(WIDTHS), generator=generator, device="cpu"))


def reference(dp: int, start: torch.Tensor, adam_steps: int) -> tuple[float, torch.Tensor]:
    """fp64: the DP-mean of the summed micro-batch gradients (each divided by ACCUMULATION), its norm, and the
    weights after the clipped AdamW step number `adam_steps`, all earlier ones on zero gradients (DeepSpeed's
    bf16 wrapper without ZeRO makes one when it is built), which leave the weights and moments as they are."""
    grad = sum(inputs(r).double().sum(0) / ACCUMULATION for r in range(dp)) / dp
    norm = float(grad.norm())
    clipped = grad * min(1.0, CLIP / (norm + 1e-6))
    (beta1, beta2), t = BETAS, adam_steps
    first = (1 - beta1) * clipped / (1 - beta1**t)
    second = (1 - beta2) * clipped**2 / (1 - beta2**t)
    return norm, start.double() - LR * first / (second.sqrt() + EPS)


def config(stage: int, dp: int):
    from dsl_scale.config import Config

    cfg = Config()
    cfg.train.precision, cfg.train.micro_batch, cfg.train.global_batch = "bf16", 1, ACCUMULATION * dp
    cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay, cfg.optim.grad_clip = LR, EPS, 0.0, CLIP
    cfg.optim.warmup_steps, cfg.optim.betas = 1, list(BETAS)
    cfg.parallel.zero_stage, cfg.parallel.zero3_persistence_threshold = stage, 0
    return cfg


def ds_masters(engine, stage: int) -> dict[str, torch.Tensor]:
    """The fp32 masters of what this rank holds, read through DeepSpeed's public API where it has one."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_local_fp32_param

    named = dict(engine.module.named_parameters())
    if stage == 0:
        wrapper = engine.optimizer
        by_id = {id(lo): hi for los, his in zip(wrapper.fp16_groups, wrapper.fp32_groups) for lo, hi in zip(los, his)}
        return {n: by_id[id(p)].detach().clone() for n, p in named.items()}
    if stage == 3:
        return {n: safe_get_local_fp32_param(p).detach().clone().view(p.ds_tensor.shape) for n, p in named.items()}
    return {n: safe_get_full_fp32_param(p).detach().clone().view(p.shape) for n, p in named.items()}


@contextlib.contextmanager
def counting_collectives():
    """Counts the torch.distributed collectives called inside (the list's one element)."""
    names = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "reduce_scatter_tensor")
    originals, count = {name: getattr(dist, name) for name in names}, [0]

    def counted(original):
        def call(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(dist, name, counted(original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def check(stage: int, topo) -> dict:
    from safetensors.torch import load_file

    from dsl_scale.checkpoint.manager import Checkpointer
    from dsl_scale.parallel import engine as engine_lib
    from dsl_scale.parallel.masters import full_masters, local_tensor, weight_source
    from dsl_scale.train.ema import EMA

    model = Tiny(torch.Generator(device="cpu").manual_seed(7))
    start = torch.cat([model.a.detach(), model.b.detach()]).clone()
    engine = engine_lib.build_engine(model, config(stage, topo.dp), topo)
    engine_lib.skip_single_replica_allreduce(engine, topo.dp, stage)
    ema = EMA(weight_source(engine), DECAY)
    before = {n: t.clone() for n, t in ema.state_dict().items()}  # by name, as saved (ZeRO-1/2: gathered)
    norm = None
    for row in inputs(topo.dp_rank).bfloat16().split(1):
        engine.backward(engine(row))
        norm = engine_lib.step(engine, topo.tp_rank, CLIP)
    with counting_collectives() as collectives:
        ema.update()
    after = ema.state_dict()
    reloaded = EMA(weight_source(engine), DECAY)  # the current masters, then the saved average loaded over them
    reloaded.load_state_dict(after)
    round_trip = reloaded.state_dict()

    masters = ds_masters(engine, stage)
    from_masters = {n: before[n].lerp(masters[n], 1 - DECAY) for n in before}
    from_bf16 = {n: before[n].lerp(local_tensor(p).float(), 1 - DECAY) for n, p in engine.module.named_parameters()}
    result = {"stage": stage, "grad_norm": norm, "optimizer": type(engine.optimizer).__name__,
              "ema_is_from_masters": all(torch.equal(after[n], from_masters[n]) for n in before),
              "ema_is_from_bf16": all(torch.equal(after[n], from_bf16[n]) for n in before),
              "ema_update_collectives": collectives,
              "ema_held_elements": sum(t.numel() for t in ema.shadow.values()),
              "ema_saved_elements": sum(t.numel() for t in after.values()),
              "ema_round_trip": sorted(round_trip) == sorted(after)
              and all(torch.equal(round_trip[n], after[n]) for n in after)}

    full = full_masters(engine)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_list = [tmp]
        dist.broadcast_object_list(tmp_list, src=0)  # rank 0 writes, into its directory
        checkpointer = Checkpointer(tmp_list[0], topo, stage, keep=1, resume=False)
        written = checkpointer.save_final_weights(engine.module, full)
        dist.barrier()
        if written is not None:
            saved = load_file(written)
            inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch AdamW
            adam_steps = {int(state["step"]) for state in inner.state.values()}
            assert len(adam_steps) == 1, adam_steps
            expected_norm, expected = reference(topo.dp, start, adam_steps.pop())
            weights = torch.cat([saved["a"], saved["b"]])
            result.update({
                "reference_norm": expected_norm,
                "max_master_error": float((weights.double() - expected).abs().max()),
                "final_is_masters": all(torch.equal(saved[n], full[n]) for n in ("a", "b")),
                "final_is_bf16_rounded": torch.equal(weights, weights.bfloat16().float()),
                "final_dtypes": sorted({str(t.dtype) for t in saved.values()}),
            })
        dist.barrier()
    return result


def main() -> None:
    from dsl_scale.parallel.topology import init_process_groups

    topo = init_process_groups(1, 1, backend="gloo")
    for stage in (int(s) for s in sys.argv[1:]):
        result = check(stage, topo)
        if topo.rank == 0:
            print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
