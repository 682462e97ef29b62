"""Pipeline parallelism: megatron-core's 1F1B schedule driving one DiT stage per PP rank.

The schedule runs forward and backward for every micro-batch itself (loss scaled by 1 / micro-batches),
so DeepSpeed is configured for one micro-step per global step (gradient_accumulation_steps=1).
- ZeRO-0/1: plain autograd on the stage module; gradients accumulate in `param.grad`, then `finish_step`
  does DeepSpeed's data-parallel reduction before the optimizer step.
- ZeRO-2/3 reduce (and for 3, gather) inside hooks with per-backward bookkeeping, so each micro-batch goes
  through the engine's forward, whose output hooks run DeepSpeed's backward prologue and epilogue around
  every backward the schedule starts (each micro-batch's reduction adds into the partitioned gradients).
  Two things the engine would otherwise take from its own loop are set right before each backward (see
  `_BeforeBackward`): the accumulation boundary (only the last micro-batch's backward ends the step)
  and the per-backward reset of ZeRO's hook state (and ZeRO-3's micro-step count, copy-or-add), which
  `engine.forward` does, but 1F1B's cooldown runs several backwards with no forward in between (without
  the reset, the second one's epilogue never runs and ZeRO-3's step fails on unreduced gradients).
- ZeRO-3's module-trace check broadcasts over the whole world: see `zero3_checks_within_stage`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.enums import ModelType
from megatron.core.pipeline_parallel import get_forward_backward_func

from dsl_scale.core import patches
from dsl_scale.core.batch import Prepared
from dsl_scale.core.device import collective_device


class _Stage:
    """What the schedule drives: the stage module's megatron config and its input hook."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.config = module.config
        self.model_type = ModelType.encoder_or_decoder

    def set_input_tensor(self, tensor) -> None:
        self.module.set_input_tensor(tensor)


class _BeforeBackward(torch.autograd.Function):
    """Identity (a copy) on what a stage's backward starts from, the loss on the last stage and the output
    elsewhere, whose backward calls `prepare` before any gradient reaches the stage."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, prepare: Callable[[], None]) -> torch.Tensor:
        ctx.prepare = prepare
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.prepare()
        return grad, None


def _backward_preparer(engine, num_microbatches: int) -> Callable[[], None]:
    started = 0

    def prepare() -> None:
        nonlocal started
        started += 1
        engine.optimizer.clear_backward_seen_flag()
        engine.set_gradient_accumulation_boundary(started == num_microbatches)

    return prepare


def zero3_checks_within_stage() -> None:
    """ZeRO-3 checks that its recorded module order agrees with global rank 0's, by broadcasts over the
    whole world. Pipeline stages run different modules, and the broadcast, started by each stage at its
    own time, deadlocks against the pipeline's p2p transfers; the check is made over the data-parallel
    group instead (the replicas of this stage, which run the same modules in the same order).
    The registered framework patch ZERO3_TRACE_CHECK (dsl_scale/core/patches.py: version-checked, undoable)."""
    patches.apply(ZERO3_TRACE_CHECK)


ZERO3_TRACE_CHECK = "deepspeed-zero3-trace-check-within-stage"


@patches.implements(ZERO3_TRACE_CHECK)
def _check_traces_within_stage():
    from deepspeed.runtime.zero import partitioned_param_coordinator

    original = partitioned_param_coordinator.assert_ints_same_as_other_ranks
    partitioned_param_coordinator.assert_ints_same_as_other_ranks = _same_across_stage_replicas

    def undo() -> None:
        partitioned_param_coordinator.assert_ints_same_as_other_ranks = original

    return undo


def _same_across_stage_replicas(ints: list[int]) -> None:
    group = ps.get_data_parallel_group()
    if dist.get_world_size(group) == 1:
        return
    device = collective_device(group)
    values = torch.tensor([len(ints), *ints], dtype=torch.long, device=device)
    length = torch.tensor([len(ints), -len(ints)], dtype=torch.long, device=device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX, group=group)
    if int(length[0]) != -int(length[1]):
        raise RuntimeError(f"ZeRO-3 module trace lengths differ between data-parallel replicas: {len(ints)} here")
    extremes = torch.stack([values, -values])
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(extremes[0], -extremes[1]):
        raise RuntimeError("ZeRO-3 module traces differ between data-parallel replicas of a pipeline stage")


def through_engine(engine) -> bool:
    """Whether training micro-batches go through the engine (ZeRO-2/3: gradients partitioned in hooks)."""
    return bool(engine.zero_optimization_partition_gradients())


def run_schedule(engine, micro_batches: list[Prepared], loss_fn: Callable,
                 forward_only: bool) -> list[torch.Tensor]:
    """Forward (and backward unless `forward_only`) over the micro-batches; returns the per-micro-batch
    losses on the last stage, an empty list elsewhere."""
    module = engine.module
    hooked = not forward_only and through_engine(engine)
    call = engine if hooked else module
    prepare = _backward_preparer(engine, len(micro_batches)) if hooked else None

    def forward_step(data_iterator, stage):
        batch = next(data_iterator)
        if module.pre_process:
            output = call(batch.inputs, batch.sigma, dropout_seeds=batch.dropout_seeds, **batch.model_kwargs)
        else:
            output = call(None, batch.sigma, dropout_seeds=batch.dropout_seeds)
        if prepare is not None and not module.post_process:
            output = _BeforeBackward.apply(output, prepare)
        return output, partial(loss_of, batch)

    def loss_of(batch, logits):
        loss = loss_fn(logits, batch)
        if prepare is not None:
            loss = _BeforeBackward.apply(loss, prepare)
        return loss, {"loss": loss.detach().clone()}  # the schedule divides `loss` in place

    first = micro_batches[0].inputs
    results = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=[_Stage(module)],
        num_microbatches=len(micro_batches),
        seq_length=first.shape[1] + 1,  # + the conditioning row (see model/dit.py)
        micro_batch_size=first.shape[0],
        forward_only=forward_only,
    )
    return [r["loss"] for r in results]


def last_stage_mean(losses: list[torch.Tensor]) -> torch.Tensor:
    """The mean loss, computed on the last stage and shared with every stage of the pipeline."""
    group = ps.get_pipeline_model_parallel_group()
    device = collective_device(group)
    value = torch.stack(losses).float().mean().to(device) if losses else torch.zeros((), device=device)
    dist.all_reduce(value, group=group)
    return value


def finish_step(engine) -> None:
    """DeepSpeed's data-parallel gradient reduction for gradients computed outside engine.backward
    (ZeRO-2/3 reduced each micro-batch's gradients in their backward epilogues already; with one replica
    and ZeRO-0 there is nothing to reduce, see engine.skip_single_replica_allreduce)."""
    if engine.enable_backward_allreduce and not through_engine(engine):
        engine.allreduce_gradients()
