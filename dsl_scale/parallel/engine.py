"""The DeepSpeed engine around a model: ZeRO stage, precision, AdamW, warm-up, clipping, DP group."""

from __future__ import annotations

from typing import Any

import torch

from dsl_scale.config import Config
from dsl_scale.core import patches
from dsl_scale.core.device import collective_device
from dsl_scale.parallel.topology import MegatronMPU, Topology, on_gpu


def resolved_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if on_gpu() else "fp32"
    return precision


def activation_dtype(precision: str) -> torch.dtype:
    """The dtype the model computes (and pipeline stages exchange) in: DeepSpeed casts the model to bf16 for
    bf16 training."""
    return torch.bfloat16 if resolved_precision(precision) == "bf16" else torch.float32


def deepspeed_clips(cfg: Config) -> bool:
    """ZeRO and bf16 optimizers clip with the norm they report; DeepSpeed's plain fp32 path computes a norm it
    does not keep, so there `step` computes the norm once and clips itself."""
    return cfg.parallel.zero_stage > 0 or resolved_precision(cfg.train.precision) != "fp32"


def deepspeed_config(cfg: Config, topo: Topology) -> dict[str, Any]:
    t, o = cfg.train, cfg.optim
    accumulation = t.global_batch // (t.micro_batch * topo.dp)
    if topo.pp > 1:  # megatron's schedule accumulates the micro-batches (parallel/pipeline.py)
        accumulation = 1
    return {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.global_batch // (topo.dp * accumulation),
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": o.grad_clip if deepspeed_clips(cfg) else 0.0,
        "optimizer": {
            "type": "AdamW",
            # torch_adam: torch's AdamW instead of DeepSpeed's fused CPU Adam (a 2-minute compile on CPU).
            "params": {
                "lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
                "torch_adam": True, "adam_w_mode": True,
            },
        },
        "zero_optimization": {
            "stage": cfg.parallel.zero_stage,
            "stage3_param_persistence_threshold": cfg.parallel.zero3_persistence_threshold,
        },
        "bf16": {"enabled": resolved_precision(t.precision) == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def warmup_then_constant(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """MDLM's schedule: lr · min(1, k / warmup) for the k-th update (k from 1), then constant."""
    warmup = max(warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: min(1.0, (done + 1) / warmup))


def sum_sequence_parallel_grads(module: torch.nn.Module) -> None:
    """Each TP rank computes the gradient of a `sequence_parallel` parameter from its own part of the
    sequence; sum the parts as each backward produces them (before accumulation and DeepSpeed's hooks)."""
    from megatron.core import parallel_state as ps

    group = ps.get_tensor_model_parallel_group()

    def summed(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=group)
        return grad

    for param in module.parameters():
        if getattr(param, "sequence_parallel", False):
            param.register_hook(summed)


def build_engine(model: torch.nn.Module, cfg: Config, topo: Topology):
    import deepspeed

    mark_norm_owners(model, topo.tp_rank)
    if topo.pp > 1 and cfg.parallel.zero_stage == 3:
        from dsl_scale.parallel.pipeline import zero3_checks_within_stage

        zero3_checks_within_stage()
    if cfg.parallel.sequence_parallel:
        sum_sequence_parallel_grads(model)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, topo),
        mpu=MegatronMPU(),
        lr_scheduler=lambda optimizer: warmup_then_constant(optimizer, cfg.optim.warmup_steps),
    )
    return engine


def mark_norm_owners(module: torch.nn.Module, tp_rank: int) -> None:
    """Make DeepSpeed count each parameter once in the global gradient norm.

    DeepSpeed counts a parameter on every rank when it is model-parallel, else only on model-parallel
    rank 0. With pipeline stages, a TP-replicated parameter lives on TP rank 0 of *its* stage, whose
    model-parallel rank is not 0, so on TP rank 0 every parameter is marked as owned.
    """
    if tp_rank == 0:
        for param in module.parameters():
            param.model_parallel = True


def grad_norm(module: torch.nn.Module, tp_rank: int) -> float:
    """Global L2 norm of the gradients over the TP × PP group, each parameter counted once."""
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group()
    squares = torch.zeros((), dtype=torch.float64, device=collective_device(group))
    for param in module.parameters():
        owned = tp_rank == 0 or getattr(param, "tensor_model_parallel", False)
        if param.grad is not None and owned:
            squares += _sum_of_squares(param.grad.detach()).to(squares.device)
    torch.distributed.all_reduce(squares, group=group)
    return float(squares.sqrt())


def _sum_of_squares(tensor: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Σx² in fp64 without an fp64 copy of the tensor: fp32 norms of 4096-element rows, squared and summed in
    fp64 (relative error ~1e-9; a whole-tensor fp32 norm is off by ~1e-3 at 10⁷ elements, a .double() copy
    of every gradient cost ~1 s per step of the `small` model on CPU)."""
    flat = tensor.reshape(-1).float()
    whole = flat.numel() // chunk * chunk
    squares = torch.linalg.vector_norm(flat[:whole].view(-1, chunk), dim=1).double().pow(2).sum()
    return squares + flat[whole:].double().pow(2).sum()


def skip_single_replica_allreduce(engine, dp: int, zero_stage: int) -> None:
    """With one data-parallel replica and no ZeRO partitioning, DeepSpeed's gradient all-reduce is a flatten, a
    no-op reduction and a copy back of every gradient: skip it."""
    if dp == 1 and zero_stage == 0:
        patches.require("deepspeed-engine-backward-allreduce")  # an engine attribute, not a documented switch
        engine.enable_backward_allreduce = False


def clip_gradients(module: torch.nn.Module, norm: float, max_norm: float) -> None:
    """Scale every gradient by max_norm / norm when the norm exceeds max_norm (DeepSpeed's and torch's rule:
    coefficient max_norm / (norm + 1e-6)); gradients within the bound are left untouched."""
    coefficient = max_norm / (norm + 1e-6)
    if max_norm > 0 and coefficient < 1.0:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, coefficient)


def step(engine, tp_rank: int, max_norm: float) -> float | None:
    """engine.step(), returning the pre-clipping gradient norm when this micro-step ended a global step.

    DeepSpeed reports the norm itself under ZeRO and bf16 and clips there (`deepspeed_clips`); on its plain
    fp32 path the norm is computed here (over the model-parallel group, like DeepSpeed does) and the
    gradients are clipped to `max_norm` before the optimizer step.
    """
    boundary = engine.is_gradient_accumulation_boundary()
    norm = None
    if boundary and not (engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled()):
        norm = grad_norm(engine.module, tp_rank)
        clip_gradients(engine.module, norm, max_norm)
    engine.step()
    if boundary and norm is None:
        reported = engine.get_global_grad_norm()
        norm = float(reported) if reported is not None else None
    return norm
