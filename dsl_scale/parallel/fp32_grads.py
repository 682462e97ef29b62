"""bf16 without ZeRO: gradients accumulated over micro-batches and all-reduced over data-parallel ranks in fp32.

DeepSpeed 0.19 refuses fp32 gradient accumulation for bf16 parameters without ZeRO, and its bf16 wrapper
(FP16_UnfusedOptimizer) would sum the micro-batches in the bf16 `param.grad` and all-reduce them in bf16. Here
each bf16 parameter's gradient is added into one flat fp32 buffer as soon as autograd has accumulated it
(and `param.grad` is dropped); at the end of the step the buffer is averaged over the data-parallel group in
fp32, clipped by the caller, and handed to the fp32 master weights (the wrapper's `fp32_groups`, one per
parameter) just before torch's AdamW steps them. Memory: 4 bytes per parameter for the buffer, where the bf16
`param.grad`s took 2 (and the wrapper still allocates fp32 zeros for each master's gradient at the step, which
the buffer then replaces).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dsl_scale.core import patches
from dsl_scale.core.device import collective_device

REQUIREMENT = "deepspeed-bf16-fp32-gradients"  # in dsl_scale/core/patches.py


class Fp32Gradients:
    def __init__(self, engine, dp_group):
        patches.require(REQUIREMENT)
        wrapper = engine.optimizer
        if not (hasattr(wrapper, "fp16_groups") and hasattr(wrapper, "fp32_groups")):
            raise TypeError(f"bf16 without ZeRO expects DeepSpeed's FP16_UnfusedOptimizer wrapper (one fp32 "
                            f"master per parameter), got {type(wrapper).__name__}")
        self.dp_group = dp_group
        self.pairs = [(low, high) for lows, highs in zip(wrapper.fp16_groups, wrapper.fp32_groups)
                      for low, high in zip(lows, highs)]
        total = sum(low.numel() for low, _ in self.pairs)
        device = self.pairs[0][1].device if self.pairs else torch.device("cpu")
        self.flat = torch.zeros(total, dtype=torch.float32, device=device)
        self.grads: dict[int, torch.Tensor] = {}
        offset = 0
        for low, _ in self.pairs:
            self.grads[id(low)] = self.flat.narrow(0, offset, low.numel()).view_as(low)
            offset += low.numel()
            low.register_post_accumulate_grad_hook(self._accumulate)
        engine.enable_backward_allreduce = False  # the reduction is `all_reduce` below, in fp32
        wrapper.optimizer.register_step_pre_hook(self._hand_to_masters)
        wrapper.optimizer.register_step_post_hook(self._clear)

    @torch.no_grad()
    def _accumulate(self, param: torch.nn.Parameter) -> None:
        self.grads[id(param)].add_(param.grad)
        param.grad = None

    def gradients(self, module: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(parameter, its fp32 gradient) for the module's parameters, for the norm and clipping."""
        return [(p, self.grads[id(p)]) for p in module.parameters() if id(p) in self.grads]

    @torch.no_grad()
    def all_reduce(self) -> None:
        """The data-parallel mean of the accumulated gradients (DeepSpeed's rule: sum, then divide)."""
        size = dist.get_world_size(self.dp_group)
        if size > 1:
            reduced = self.flat.to(collective_device(self.dp_group))  # itself where the backend reaches it
            dist.all_reduce(reduced, group=self.dp_group)
            self.flat.copy_(reduced.div_(size))

    def skip_step(self) -> None:
        """A non-finite gradient: drop the step's gradients and have DeepSpeed's wrapper skip the step, as it does
        when it finds a non-finite bf16 gradient (its overflow check, on by default for bf16)."""
        self.flat.zero_()
        low = self.pairs[0][0]
        low.grad = torch.full_like(low, float("nan"))

    def _hand_to_masters(self, optimizer, args, kwargs) -> None:
        for low, high in self.pairs:
            high.grad = self.grads[id(low)]

    def _clear(self, optimizer, args, kwargs) -> None:
        self.flat.zero_()
