"""dsl-estimate-memory: the bytes each rank will hold for a training config at its world size, before launch.

    dsl-estimate-memory [--world-size N] [--json] KEY=VALUE ...   (the training overrides, e.g. preset=gpu_large_4node)

Per rank, by component:
- params, grads, optimizer, ema: from Ψ, the parameters on the rank (its pipeline stage's, tensor-parallel
  ones divided by TP; counted from the model built on the `meta` device, so nothing is allocated), the DP size N
  and the ZeRO stage. fp32: params 4Ψ (ZeRO-3: /N), grads 4Ψ (ZeRO-2/3: /N), optimizer 8Ψ for AdamW's moments
  (ZeRO ≥ 1: 12Ψ/N, the moments and the fp32 partition DeepSpeed steps), EMA 4Ψ (ZeRO ≥ 1: 4Ψ/N, sharded as
  the fp32 partitions are). bf16: params 2Ψ, gradients accumulated and reduced in fp32 (4Ψ), fp32 masters with
  the moments (12Ψ, ZeRO ≥ 1: /N). tools/bench_memory.py measures the fp32 figures on live engines.
- activations: what autograd keeps from one micro-batch's forward for its backward, traced on `meta` at the
  run's micro-batch, sequence length and dtype, by the blocks' and the embedding's and head's share; under
  TP a saved tensor of the model's width stays whole on every rank (split with sequence parallelism) and the
  rest (heads, QKV, MLP, logits) is split; with `model.recompute=true` a block keeps only its inputs. Under PP,
  stage s of 1F1B holds min(PP − s, micro-batches) micro-batches in flight. Transient working memory (a loss
  chunk, a block's recomputation), communication buckets and the framework's own allocations come on top.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from dataclasses import dataclass, field

import torch

COMPONENTS = ("params", "grads", "optimizer", "ema", "activations")


@dataclass
class StageEstimate:
    stage: int
    parameters: int  # Ψ: on one rank of this stage
    bytes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


def state_bytes(psi: int, dp: int, zero: int, precision: str, ema: bool) -> dict[str, int]:
    """Parameter, gradient, optimizer and EMA bytes on one rank holding Ψ = `psi` parameters."""
    weight = 4 if precision == "fp32" else 2
    if zero == 0:
        optimizer = 8 * psi if precision == "fp32" else 12 * psi
    else:
        optimizer = 12 * psi // dp
    return {
        "params": weight * psi // (dp if zero == 3 else 1),
        "grads": 4 * psi // (dp if zero >= 2 else 1),
        "optimizer": optimizer,
        "ema": (4 * psi // (dp if zero >= 1 else 1)) if ema else 0,
    }


def _single_process_group() -> None:
    """megatron-core's layers need its parallel state, also to be built on `meta`: a world of one, TP = PP = 1."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from dsl_scale.parallel.topology import free_port

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def _build(cfg, vocab: int, mask_id: int, pp: int = 1, stage: int = 0):
    from dsl_scale.model.factory import build_dit

    with torch.device("meta"):
        return build_dit(cfg.model, vocab, seed=cfg.train.seed, causal=cfg.objective.name == "ar", pp=pp,
                         stage=stage, objective=cfg.objective, mask_id=mask_id)


def rank_parameters(module: torch.nn.Module, tp: int) -> int:
    """Parameters one rank of a TP group holds of `module` (built at TP = 1): the split ones divided by TP."""
    return sum(p.numel() // tp if getattr(p, "tensor_model_parallel", False) else p.numel()
               for p in module.parameters())


def _tp_share(t: torch.Tensor, hidden: int, head_dim: int, n_heads: int, tp: int, sequence_parallel: bool) -> int:
    """The bytes of saved tensor `t`'s storage (traced at TP = 1) on one rank of a TP group."""
    size = t.untyped_storage().nbytes()
    if tp == 1 or t.dim() == 0:
        return size
    last = t.shape[-1]
    if last == hidden:  # the residual stream and what the norms see: whole on each TP rank
        return size // tp if sequence_parallel else size
    head_split = last == head_dim and n_heads in tuple(t.shape[:-1])
    if head_split or last % tp == 0 and last != hidden and last > hidden:  # QKV, MLP inner, logits
        return size // tp
    return size


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash, or the CPU's) keeps for backward: q, k, v, the output and one fp32
    log-sum-exp per query and head; on `meta`, scaled_dot_product_attention would trace the math path, which
    keeps the L × L probabilities instead. Only traced, never differentiated."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("traced for its saved tensors only")


@contextlib.contextmanager
def _fused_attention():
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *args, **kwargs: _FusedAttention.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def activation_bytes(cfg, vocab: int, mask_id: int, micro_batch: int, tp: int = 1) -> dict[str, int]:
    """Bytes autograd saves in one micro-batch's forward and loss, by region: "embed", "block", "head"
    (the embedding and conditioning; one block, averaged over the blocks; the output layer and loss), at
    this rank's TP share."""
    from dsl_scale.core import seeding
    from dsl_scale.diffusion.objectives import build_objective
    from dsl_scale.parallel.cross_entropy import nll_function
    from dsl_scale.parallel.engine import activation_dtype

    m = cfg.model
    dtype = activation_dtype(cfg.train.precision)
    model = _build(cfg, vocab, mask_id).to(device="meta", dtype=dtype).train()
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    objective = build_objective(cfg.objective, mask_id, vocab, cfg.train.seed)
    region = ["embed"]
    # by storage (a view or a detached alias of a saved tensor holds no memory of its own); on `meta` a
    # storage's identity is its StorageImpl, as its address is elsewhere
    saved: dict[str, dict[int, torch.Tensor]] = {"embed": {}, "block": {}, "head": {}}
    block_inputs: dict[int, torch.Tensor] = {}

    def enter_block(module, args):
        region[0] = "block"
        if m.recompute:
            block_inputs[args[0].untyped_storage()._cdata] = args[0]  # a checkpointed block keeps its input

    for block in model.blocks.values():
        block.register_forward_pre_hook(enter_block)
    model.output_layer.register_forward_pre_hook(lambda module, args: region.__setitem__(0, "head"))

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()._cdata
        if storage not in params:
            saved[region[0]].setdefault(storage, t)
        return t

    positions = list(range(micro_batch))
    tokens = torch.zeros(micro_batch, m.seq_len, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _fused_attention():
        batch = objective.prepare(tokens, torch.arange(micro_batch, device="cpu"), 0, micro_batch,
                                  seeding.MASK_STREAM)
        seeds = seeding.per_example(positions, cfg.train.seed, seeding.DROPOUT_STREAM, 0)
        sigma = None if batch.sigma is None else batch.sigma.to(dtype)
        logits = model(batch.inputs, sigma, dropout_seeds=seeds, **batch.model_kwargs)
        objective.loss(logits, batch, nll_function(m.loss_chunk_tokens), 0)
    head_dim = m.hidden // m.n_heads
    sp = cfg.parallel.sequence_parallel

    def total(tensors) -> int:
        return sum(_tp_share(t, m.hidden, head_dim, m.n_heads, tp, sp) for t in tensors)

    blocks = total(saved["block"].values()) + total(block_inputs.values())
    return {"embed": total(saved["embed"].values()), "block": blocks // m.n_blocks,
            "head": total(saved["head"].values())}


def estimate(cfg, world_size: int) -> list[StageEstimate]:
    """Per pipeline stage, one rank's bytes by component."""
    from dsl_scale.config import validate

    validate(cfg, world_size)
    with warnings.catch_warnings():  # megatron-core's notes on building its layers without a GPU
        warnings.simplefilter("ignore")
        return _estimate(cfg, world_size)


def _estimate(cfg, world_size: int) -> list[StageEstimate]:
    from dsl_scale.tokenizer import get_tokenizer

    _single_process_group()
    par, t = cfg.parallel, cfg.train
    tp, pp = par.tp, par.pp
    dp = world_size // (tp * pp)
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    vocab, mask_id = tokenizer.vocab_size, tokenizer.mask_id
    precision = "bf16" if t.precision == "bf16" or t.precision == "auto" and torch.cuda.is_available() else "fp32"
    if precision != t.precision:
        cfg = _with_precision(cfg, precision)
    acts = activation_bytes(cfg, vocab, mask_id, t.micro_batch, tp)
    micro_batches = t.global_batch // (t.micro_batch * dp)
    per_stage = cfg.model.n_blocks // pp
    stages = []
    for s in range(pp):
        psi = rank_parameters(_build(cfg, vocab, mask_id, pp, s), tp)
        one = acts["block"] * per_stage + (acts["embed"] if s == 0 else 0) + (acts["head"] if s == pp - 1 else 0)
        in_flight = min(pp - s, micro_batches) if pp > 1 else 1
        stage = StageEstimate(s, psi, state_bytes(psi, dp, par.zero_stage, precision, t.ema > 0))
        stage.bytes["activations"] = one * in_flight
        stages.append(stage)
    return stages


def _with_precision(cfg, precision: str):
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


def _gb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n} B"


def report(cfg, world_size: int, stages: list[StageEstimate]) -> str:
    par = cfg.parallel
    dp = world_size // (par.tp * par.pp)
    lines = [f"memory per rank (estimate) for {cfg.model.name} at world size {world_size}: TP {par.tp} × PP "
             f"{par.pp} × DP {dp}, ZeRO-{par.zero_stage}, micro-batch {cfg.train.micro_batch} × L "
             f"{cfg.model.seq_len}, recompute {'on' if cfg.model.recompute else 'off'}",
             f"{'stage':>5} {'parameters':>13} " + " ".join(f"{c:>12}" for c in COMPONENTS) + f" {'total':>12}"]
    for s in stages:
        lines.append(f"{s.stage:>5} {s.parameters:>13,} " + " ".join(f"{_gb(s.bytes[c]):>12}" for c in COMPONENTS)
                     + f" {_gb(s.total):>12}")
    worst = max(stages, key=lambda s: s.total)
    lines.append(f"largest: {_gb(worst.total)} per rank (stage {worst.stage}); transient buffers, communication "
                 f"buckets and the framework's own memory come on top")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dsl_scale.config import register_configs
    from dsl_scale.launch import checked_config, hydra_overrides

    parser = argparse.ArgumentParser(prog="dsl-estimate-memory", description=__doc__.splitlines()[0],
                                     epilog="Overrides are the training command's (Hydra key=value).")
    parser.add_argument("--world-size", type=int, help="ranks in the job (default: TP × PP, one DP replica)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    args, rest = parser.parse_known_args(argv)
    register_configs()
    cfg = checked_config("dsl-estimate-memory", "config", hydra_overrides(rest), None)
    world = args.world_size or cfg.parallel.tp * cfg.parallel.pp
    try:
        stages = estimate(cfg, world)
    except ValueError as err:
        print(f"dsl-estimate-memory: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"world_size": world, "stages": [
            {"stage": s.stage, "parameters": s.parameters, **s.bytes, "total": s.total} for s in stages]}))
    else:
        print(report(cfg, world, stages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
