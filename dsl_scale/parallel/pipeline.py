"""Pipeline parallelism: megatron-core's 1F1B schedule driving one DiT stage per PP rank.

The schedule runs forward and backward for every micro-batch itself (plain autograd, loss scaled by
1 / micro-batches), so DeepSpeed sees one micro-step per global step: gradients accumulate in
`param.grad`, then `finish_step` does DeepSpeed's data-parallel reduction and optimizer step.
DeepSpeed's ZeRO-2/3 reduce or gather inside its own backward and forward hooks, which this schedule
bypasses: they are refused with PP > 1, as DeepSpeed's own pipeline engine refuses them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.enums import ModelType
from megatron.core.pipeline_parallel import get_forward_backward_func

from dsl_scale.train.objectives import Prepared


class _Stage:
    """What the schedule drives: the stage module's megatron config and its input hook."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.config = module.config
        self.model_type = ModelType.encoder_or_decoder

    def set_input_tensor(self, tensor) -> None:
        self.module.set_input_tensor(tensor)


def run_schedule(module: torch.nn.Module, micro_batches: list[Prepared], loss_fn: Callable,
                 forward_only: bool) -> list[torch.Tensor]:
    """Forward (and backward unless `forward_only`) over the micro-batches; returns the per-micro-batch
    losses on the last stage, an empty list elsewhere."""

    def forward_step(data_iterator, stage):
        batch = next(data_iterator)
        if module.pre_process:
            output = module(batch.inputs, batch.sigma, **batch.model_kwargs)
        else:
            output = module(None, batch.sigma)
        return output, partial(loss_of, batch)

    def loss_of(batch, logits):
        loss = loss_fn(logits, batch)
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
    value = torch.stack(losses).float().mean() if losses else torch.zeros(())
    dist.all_reduce(value, group=ps.get_pipeline_model_parallel_group())
    return value


def finish_step(engine) -> None:
    """DeepSpeed's data-parallel gradient reduction for gradients computed outside engine.backward."""
    engine.allreduce_gradients()
