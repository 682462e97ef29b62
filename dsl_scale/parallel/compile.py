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


def compile_blocks(model: nn.Module) -> int:
    """Compile every block of `model` (a DiT stage: `model.blocks`) in place; returns how many."""
    blocks = list(model.blocks.values())
    if not blocks:
        return 0
    residuals = {name: torch.compile(getattr(type(blocks[0]), name)) for name in _RESIDUALS}
    for block in blocks:
        for name in _BRANCHES:
            setattr(block, name, torch.compile(getattr(block, name)))
        for name, compiled in residuals.items():
            setattr(block, name, compiled)
    return len(blocks)


def apply_compile(model: nn.Module, setting: object, zero_stage: int = 0) -> bool:
    """`model.compile` on a freshly built DiT stage; returns whether it compiled."""
    if not compile_enabled(setting, zero_stage):
        return False
    compile_blocks(model)
    return True
