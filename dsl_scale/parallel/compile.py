"""`model.compile`: torch.compile of the DiT's blocks, applied from outside the model (as torchtitan's
`parallelize` does) after it is built and before the engine wraps it.

Per block, the attention and MLP branches (LayerNorm, adaLN modulation, projections, rotary, attention, GELU),
the seeded dropout masks (counter-RNG integer arithmetic: one kernel per site) and the gated residuals are
compiled, so each becomes a few fused kernels around the matmuls. The compiled callables are instance
attributes: the parameters, their names and the checkpoints do not change. Blocks share one compiled graph
(modules' parameters are graph inputs), so the compile cost does not grow with depth.
"""

from __future__ import annotations

import torch
from torch import nn

from dsl_scale.core import patches

SETTINGS = ("auto", "true", "false")


def compile_enabled(setting: object, zero_stage: int = 0) -> bool:
    """Whether `model.compile=setting` compiles: auto = with CUDA and ZeRO < 3 (ZeRO-3 gathers parameters in
    module hooks, which graphs would have to break around; on the CPU compiling does not pay)."""
    value = str(setting).lower()
    if value not in SETTINGS:
        raise ValueError(f"model.compile={setting!r} must be one of {SETTINGS}")
    if value == "auto":
        return torch.cuda.is_available() and zero_stage < 3
    return value == "true"


_BRANCHES = ("attention_branch", "mlp_branch")
_RESIDUALS = ("gated_residual", "dropped_residual", "keep_scale")  # static methods


MEGATRON_LINEAR_WARNING = "megatron-linear-warning-flag"  # a requirement in dsl_scale/core/patches.py


def _no_first_call_warning() -> None:
    """No warnings inside megatron's tensor-parallel linear, which would make graphs rank-dependent. It warns once, on
    its first call, about CUDA_DEVICE_MAX_CONNECTIONS and flips a function attribute: inside a compiled branch
    that is a graph break and, once flipped, a failed guard and a recompile of every graph that saw it. The flag
    is set before compiling (the advice is for megatron's async overlap, which dsl_scale does not use)."""
    from megatron.core.tensor_parallel import layers

    patches.require(MEGATRON_LINEAR_WARNING)
    layers.linear_with_grad_accumulation_and_async_allreduce.warned = True
    patches.apply(MEGATRON_IMPLICIT_TP_GROUP)


MEGATRON_IMPLICIT_TP_GROUP = "megatron-implicit-tp-group"  # a patch in dsl_scale/core/patches.py


@patches.implements(MEGATRON_IMPLICIT_TP_GROUP)
def _explicit_tp_group():
    """RowParallelLinear.forward hands its linear `tp_group=None`, and megatron's lookup of the default group warns
    about it (a DeprecationWarning) on rank 0 only: inside a compiled branch a graph break on rank 0 alone, so
    rank 0 compiled more graphs than the others (49 against 29 at TP2) and hit the recompile limit. The lookup
    as `layers` calls it gets the default group passed explicitly: the same group, no warning."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import layers

    original = layers.get_tensor_model_parallel_group_if_none

    def explicit(tp_group=None, is_expert=False, check_initialized=True):
        if tp_group is None and parallel_state.is_initialized():
            tp_group = (parallel_state.get_expert_tensor_parallel_group(check_initialized=check_initialized)
                        if is_expert else
                        parallel_state.get_tensor_model_parallel_group(check_initialized=check_initialized))
        return original(tp_group, is_expert=is_expert, check_initialized=check_initialized)

    layers.get_tensor_model_parallel_group_if_none = explicit

    def undo() -> None:
        layers.get_tensor_model_parallel_group_if_none = original

    return undo


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every block of `model` (a DiT stage: `model.blocks`) in place with `backend` (tests count graphs
    with Dynamo's "eager"); returns how many."""
    blocks = list(model.blocks.values())
    if not blocks:
        return 0
    _no_first_call_warning()
    residuals = {name: torch.compile(getattr(type(blocks[0]), name), backend=backend) for name in _RESIDUALS}
    for block in blocks:
        for name in _BRANCHES:
            setattr(block, name, torch.compile(getattr(block, name), backend=backend))
        for name, compiled in residuals.items():
            setattr(block, name, compiled)
    return len(blocks)


def apply_compile(model: nn.Module, setting: object, zero_stage: int = 0) -> bool:
    """`model.compile` on a freshly built DiT stage; returns whether it compiled."""
    if not compile_enabled(setting, zero_stage):
        return False
    compile_blocks(model)
    return True
