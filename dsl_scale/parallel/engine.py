"""The DeepSpeed engine around a model: ZeRO stage, precision, AdamW, warm-up, clipping, DP group."""

from __future__ import annotations

import math
from typing import Any

import torch

from dsl_scale.config import Config
from dsl_scale.core import patches
from dsl_scale.core.device import collective_device, compute_device
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
    """ZeRO optimizers clip with the norm they report. Without ZeRO, `step` computes the norm once and clips
    itself: DeepSpeed's plain fp32 path computes a norm it does not keep, and under bf16 the gradients are
    dsl_scale's fp32 accumulators (parallel/fp32_grads.py), which DeepSpeed's bf16 wrapper does not see."""
    return cfg.parallel.zero_stage > 0


def deepspeed_config(cfg: Config, topo: Topology) -> dict[str, Any]:
    t = cfg.train
    bf16 = resolved_precision(t.precision) == "bf16"
    accumulation = t.global_batch // (t.micro_batch * topo.dp)
    if topo.pp > 1:  # megatron's schedule accumulates the micro-batches (parallel/pipeline.py)
        accumulation = 1
    return {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.global_batch // (topo.dp * accumulation),
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.optim.grad_clip if deepspeed_clips(cfg) else 0.0,
        "optimizer": {"type": "AdamW", "params": adamw_params(cfg, on_gpu())},
        "zero_optimization": {
            "stage": cfg.parallel.zero_stage,
            "stage3_param_persistence_threshold": cfg.parallel.zero3_persistence_threshold,
            # ZeRO-1/2: reduce each gradient bucket on a side stream while the backward goes on (ZeRO-3 does so
            # by default); on the CPU there is no stream to overlap with
            **({"overlap_comm": True} if on_gpu() and cfg.parallel.zero_stage in (1, 2) else {}),
        },
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        **(bf16_gradient_types(cfg.parallel.zero_stage) if bf16 else {}),
    }


def adamw_params(cfg: Config, gpu: bool) -> dict[str, Any]:
    """AdamW's DeepSpeed parameters: always torch's AdamW (`torch_adam`), with its fused kernel on a GPU.

    Not DeepSpeed's own Adams: its CPU Adam is a 2-minute compile; its CUDA FusedAdam is a JIT build on the
    target too (the GPU wheels carry no prebuilt ops, tools/gpu_wheelhouse.sh), and as a fused optimizer it
    would make DeepSpeed's bf16 ZeRO-0 wrapper keep flat master groups instead of one master per parameter,
    which checkpoint/reshard.py and parallel/fp32_grads.py rely on. torch's `fused=True` needs no build and
    leaves every optimizer-state layout as it is; on the CPU the foreach kernel stays (measured MFU).
    """
    o = cfg.optim
    params = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
              "torch_adam": True, "adam_w_mode": True}
    if gpu:
        params["fused"] = True
    return params


def bf16_gradient_types(zero_stage: int) -> dict[str, Any]:
    """Under bf16, gradients accumulate over micro-batches and are reduced over data-parallel ranks in fp32.

    ZeRO-1/2/3: DeepSpeed's own fp32 accumulation (`data_types.grad_accum_dtype`: an fp32 `grad_accum` per
    parameter at ZeRO-1, fp32 gradient partitions at ZeRO-2/3) and fp32 reductions. At ZeRO-1 DeepSpeed would
    swap its ZeRO-1 optimizer for BF16_Optimizer, whose state layout checkpoint/ does not read: the patch
    ZERO1_FP32_ACCUMULATION keeps the ZeRO-1 optimizer. ZeRO-0: DeepSpeed 0.19 refuses bf16 parameters with
    fp32 accumulation without ZeRO, so dsl_scale accumulates and all-reduces in fp32 itself
    (parallel/fp32_grads.py) and DeepSpeed's own reduction is switched off.
    """
    types: dict[str, Any] = {"communication_data_type": "fp32"}
    if zero_stage >= 1:
        types["data_types"] = {"grad_accum_dtype": "fp32"}
    return types


ZERO1_FP32_ACCUMULATION = "deepspeed-zero1-bf16-fp32-accumulation"  # a patch in dsl_scale/core/patches.py


@patches.implements(ZERO1_FP32_ACCUMULATION)
def _keep_zero1_optimizer():
    from deepspeed.runtime import engine as ds_engine

    original = ds_engine.DeepSpeedEngine._do_optimizer_sanity_check

    def optimizer_wrapper(self, basic_optimizer):
        chosen = original(self, basic_optimizer)
        if chosen == ds_engine.BFLOAT16 and self.zero_optimization_stage() == 1:
            return ds_engine.ZERO_OPTIMIZATION
        return chosen

    ds_engine.DeepSpeedEngine._do_optimizer_sanity_check = optimizer_wrapper

    def undo() -> None:
        ds_engine.DeepSpeedEngine._do_optimizer_sanity_check = original

    return undo


def lr_factor(k: int, warmup_steps: int, schedule: str = "constant", total_steps: int = 0,
              min_lr_ratio: float = 0.0, decay_steps: int = 0) -> float:
    """The LR multiplier of the k-th update (k from 1): linear warm-up over warmup_steps, then
    constant: 1 (MDLM's schedule);
    cosine: from 1 down to min_lr_ratio at total_steps (half a cosine);
    wsd (warmup-stable-decay): 1 until the last decay_steps updates, then linearly down to min_lr_ratio."""
    warm = min(1.0, k / max(warmup_steps, 1))
    if schedule == "cosine" and k > warmup_steps:
        progress = min(1.0, (k - warmup_steps) / max(total_steps - warmup_steps, 1))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd" and decay_steps > 0 and k > total_steps - decay_steps:
        progress = min(1.0, (k - (total_steps - decay_steps)) / decay_steps)
        return warm * (1.0 - (1.0 - min_lr_ratio) * progress)
    return warm


def warmup_then_constant(optimizer: torch.optim.Optimizer, warmup_steps: int, schedule: str = "constant",
                         total_steps: int = 0, min_lr_ratio: float = 0.0, decay_steps: int = 0):
    """The LR schedule of `lr_factor` (the name is MDLM's default: warm-up, then constant)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: lr_factor(
        done + 1, warmup_steps, schedule, total_steps, min_lr_ratio, decay_steps))


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
    bf16 = resolved_precision(cfg.train.precision) == "bf16"
    if bf16 and cfg.parallel.zero_stage == 1:
        patches.apply(ZERO1_FP32_ACCUMULATION)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, topo),
        mpu=MegatronMPU(),
        lr_scheduler=lambda optimizer: warmup_then_constant(
            optimizer, cfg.optim.warmup_steps, cfg.optim.schedule, cfg.train.steps, cfg.optim.min_lr_ratio,
            cfg.optim.decay_steps),
    )
    buffers_to(engine.module, compute_device())  # ZeRO-3: DeepSpeed does not move a zero.Init model
    if bf16 and cfg.parallel.zero_stage == 0:
        from megatron.core import parallel_state as ps

        from dsl_scale.parallel.fp32_grads import Fp32Gradients

        setattr(engine, FP32_GRADIENTS, Fp32Gradients(engine, ps.get_data_parallel_group()))
    return engine


def buffers_to(module: torch.nn.Module, device: torch.device) -> list[str]:
    """Move every buffer of `module` to `device`, keeping its dtype; returns the names moved. DeepSpeed leaves a
    zero.Init model's buffers where they were made (it skips `module.to(device)` for it), and some are made on
    the host whatever the build context (the DSL converter's keys, from NumPy)."""
    moved = []
    for owner_name, owner in module.named_modules():
        for name, buffer in list(owner._buffers.items()):
            if buffer is not None and buffer.device != device:
                owner._buffers[name] = buffer.to(device)
                moved.append(f"{owner_name}.{name}" if owner_name else name)
    return moved


FP32_GRADIENTS = "dsl_scale_fp32_gradients"  # the engine's Fp32Gradients under bf16 without ZeRO


def fp32_gradients(engine):
    """The engine's fp32 gradient accumulator (parallel/fp32_grads.py), None where DeepSpeed keeps the gradients."""
    return getattr(engine, FP32_GRADIENTS, None)


def mark_norm_owners(module: torch.nn.Module, tp_rank: int) -> None:
    """Make DeepSpeed count each parameter once in the global gradient norm.

    DeepSpeed counts a parameter on every rank when it is model-parallel, else only on model-parallel
    rank 0. With pipeline stages, a TP-replicated parameter lives on TP rank 0 of *its* stage, whose
    model-parallel rank is not 0, so on TP rank 0 every parameter is marked as owned.
    """
    if tp_rank == 0:
        for param in module.parameters():
            param.model_parallel = True


def _module_grads(module: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    return [(p, p.grad) for p in module.parameters() if p.grad is not None]


def grad_norm(module: torch.nn.Module, tp_rank: int,
              grads: list[tuple[torch.nn.Parameter, torch.Tensor]] | None = None) -> float:
    """Global L2 norm of the gradients over the TP × PP group, each parameter counted once. `grads`: (parameter,
    gradient) pairs held outside `param.grad` (default: the module's `param.grad`s)."""
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group()
    squares = torch.zeros((), dtype=torch.float64, device=collective_device(group))
    for param, grad in _module_grads(module) if grads is None else grads:
        if tp_rank == 0 or getattr(param, "tensor_model_parallel", False):
            squares += _sum_of_squares(grad.detach()).to(squares.device)
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


def clip_gradients(module: torch.nn.Module, norm: float, max_norm: float,
                   grads: list[tuple[torch.nn.Parameter, torch.Tensor]] | None = None) -> None:
    """Scale every gradient by max_norm / norm when the norm exceeds max_norm (DeepSpeed's and torch's rule:
    coefficient max_norm / (norm + 1e-6)); gradients within the bound are left untouched."""
    coefficient = max_norm / (norm + 1e-6)
    if max_norm > 0 and coefficient < 1.0:
        torch._foreach_mul_([g for _, g in (_module_grads(module) if grads is None else grads)], coefficient)


def step(engine, tp_rank: int, max_norm: float) -> float | None:
    """engine.step(), returning the pre-clipping gradient norm when this micro-step ended a global step.

    DeepSpeed reports the norm itself under ZeRO and clips there (`deepspeed_clips`); without ZeRO the norm is
    computed here (over the model-parallel group, like DeepSpeed does) and the gradients (`param.grad` in
    fp32, the fp32 accumulators in bf16, averaged over the data-parallel group first) are clipped to
    `max_norm` before the optimizer step.
    """
    boundary = engine.is_gradient_accumulation_boundary()
    norm = None
    if boundary and not engine.zero_optimization():
        accumulated = fp32_gradients(engine)
        grads = None
        if accumulated is not None:
            accumulated.all_reduce()
            grads = accumulated.gradients(engine.module)
        norm = grad_norm(engine.module, tp_rank, grads)
        if accumulated is not None and not math.isfinite(norm):
            accumulated.skip_step()
        clip_gradients(engine.module, norm, max_norm, grads)
    engine.step()
    if boundary and norm is None:
        reported = engine.get_global_grad_norm()
        norm = float(reported) if reported is not None else None
    return norm
