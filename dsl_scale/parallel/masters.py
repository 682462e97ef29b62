"""The fp32 master weights DeepSpeed keeps for bf16 parameters, by parameter name: what the EMA averages and
what the final weights are written from (the bf16 module weights are their rounded copies).

In fp32 training the module's weights hold the masters' values: `local_masters` and `full_masters` return None,
and callers read the module.

What the EMA averages is a `WeightSource` (`weight_source(engine)`): the tensors this rank holds, keyed so that
reading them each step needs no collective, and their conversion to and from whole named tensors for checkpoints.
At ZeRO-1/2 these are the rank's flat fp32 partitions, which AdamW steps in bf16 and in fp32 training alike
(`ZeroPartitions`): the EMA costs 4Ψ/N bytes per rank and no communication per step; a checkpoint all-gathers it
once. Elsewhere they are per parameter (`NamedWeights`: the module's weights, or bf16's masters; ZeRO-3's
partitions)."""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.distributed as dist

from dsl_scale.core import patches

REQUIREMENT = "deepspeed-fp32-master-weights"  # in dsl_scale/core/patches.py


def local_masters(engine) -> dict[str, torch.Tensor] | None:
    """name → the fp32 master of what this rank holds of each trainable parameter, shaped like what it holds:
    the whole (TP-sharded) parameter at ZeRO-0/1/2, its flat ZeRO-3 partition (`ds_tensor`) at ZeRO-3.

    ZeRO-1/2 keep only this rank's slice of each flat group of masters: the slices are all-gathered (one fp32
    collective per parameter group, on every data-parallel rank). Views: copy before the next optimizer step.
    """
    if not engine.bfloat16_enabled():
        return None
    patches.require(REQUIREMENT)
    stage = engine.zero_optimization_stage() if engine.zero_optimization() else 0
    if stage == 0:
        by_id = _unfused_masters(engine.optimizer)
    elif stage in (1, 2):
        by_id = _gathered_zero_masters(engine.optimizer)
    else:
        from deepspeed.utils import safe_get_local_fp32_param

        by_id = {id(p): _shaped(safe_get_local_fp32_param(p), p.ds_tensor.shape, name)
                 for name, p in _trainable(engine.module)}
    return _by_name(engine.module, by_id)


def full_masters(engine) -> dict[str, torch.Tensor] | None:
    """name → the whole fp32 master of every trainable parameter this rank's module has (TP-sharded as the
    module is), on every rank (collectives at ZeRO-1/2/3: call on all ranks)."""
    if not engine.bfloat16_enabled() or not engine.zero_optimization() or engine.zero_optimization_stage() < 3:
        return local_masters(engine)
    patches.require(REQUIREMENT)
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: _shaped(safe_get_full_fp32_param(p), p.ds_shape, name)
            for name, p in _trainable(engine.module)}


def local_tensor(param: torch.nn.Parameter) -> torch.Tensor:
    """What this rank holds of `param`: its ZeRO-3 partition while DeepSpeed partitions it, else the whole."""
    return getattr(param, "ds_tensor", param).data


def _trainable(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _by_name(module: torch.nn.Module, by_id: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    missing = [n for n, p in _trainable(module) if id(p) not in by_id]
    if missing:
        raise LookupError(f"DeepSpeed's optimizer holds no fp32 master for parameters {missing[:5]}")
    return {n: by_id[id(p)] for n, p in _trainable(module)}


def _shaped(master: torch.Tensor | None, shape, name: str) -> torch.Tensor:
    numel = math.prod(shape)
    if master is None or master.numel() != numel:
        raise LookupError(f"{name}: DeepSpeed's fp32 master has {None if master is None else master.numel()} "
                          f"elements where {numel} are held")
    return master.view(shape)


def _unfused_masters(wrapper) -> dict[int, torch.Tensor]:
    """bf16 without ZeRO: FP16_UnfusedOptimizer keeps one fp32 copy per parameter (fp16_groups ↔ fp32_groups)."""
    if not hasattr(wrapper, "fp32_groups"):
        raise LookupError(f"bf16 without ZeRO: {type(wrapper).__name__} has no per-parameter fp32 masters")
    return {id(low): high for lows, highs in zip(wrapper.fp16_groups, wrapper.fp32_groups)
            for low, high in zip(lows, highs)}


@torch.no_grad()
def _gathered_zero_masters(optimizer) -> dict[int, torch.Tensor]:
    """ZeRO-1/2: each parameter group is one flat bf16 buffer (the parameters are views into it), cut into equal
    data-parallel partitions; this rank's fp32 partition is `single_partition_of_fp32_groups[i]`."""
    return _gather_groups(optimizer, [part.detach() for part in optimizer.single_partition_of_fp32_groups])


def _gather_groups(optimizer, partitions: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """id(parameter) → its whole value, cut from the all-gathered flat groups whose local partitions are given."""
    values: dict[int, torch.Tensor] = {}
    for i, (flat, mine) in enumerate(zip(optimizer.bit16_groups_flat, partitions)):
        group = optimizer.real_dp_process_group[i]
        pieces = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, mine, group=group)
        whole = torch.cat(pieces)
        if whole.numel() != flat.numel():
            raise LookupError(f"ZeRO group {i}: fp32 partitions hold {whole.numel()} elements, the flat bf16 "
                              f"group {flat.numel()}")
        for param, offset in _offsets(optimizer, i):
            values[id(param)] = whole.narrow(0, offset, param.numel()).view_as(param)
    return values


def _offsets(optimizer, i: int) -> list[tuple[torch.nn.Parameter, int]]:
    """(parameter, its element offset in flat group i) for the parameters of group i."""
    flat, found = optimizer.bit16_groups_flat[i], []
    for param in optimizer.bit16_groups[i]:
        offset = (param.data_ptr() - flat.data_ptr()) // flat.element_size()
        if not 0 <= offset <= flat.numel() - param.numel():
            raise LookupError(f"ZeRO group {i}: a parameter is not a view into its flat group")
        found.append((param, offset))
    return found


class WeightSource(Protocol):
    def local(self) -> dict[str, torch.Tensor]:
        """What this rank holds, read without a collective (views: copy before the next optimizer step)."""

    def to_named(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors keyed and shaped like `local()` → the checkpoint's form: parameter name → tensor."""

    def from_named(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of `to_named`."""


class NamedWeights:
    """Parameter name → the module's weights, or their fp32 masters where DeepSpeed keeps them per parameter (bf16
    without ZeRO, and ZeRO-3's partitions): the checkpoint's keys already."""

    def __init__(self, engine):
        self.engine = engine
        self.params = _trainable(engine.module)

    def local(self) -> dict[str, torch.Tensor]:
        masters = local_masters(self.engine)
        if masters is not None:
            return masters
        return {n: local_tensor(p) for n, p in self.params}

    def to_named(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(local)

    def from_named(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = sorted({n for n, _ in self.params} - set(named))
        if missing:
            raise KeyError(f"lacks parameters: {missing[:5]}")
        return {n: named[n] for n, _ in self.params}


class ZeroPartitions:
    """ZeRO-1/2: flat group i → this rank's fp32 partition of it (what AdamW steps), keyed `zero_group_{i}`."""

    def __init__(self, engine):
        patches.require(REQUIREMENT)
        self.optimizer = engine.optimizer
        self.names = {id(p): n for n, p in _trainable(engine.module)}

    def local(self) -> dict[str, torch.Tensor]:
        partitions = self.optimizer.single_partition_of_fp32_groups
        return {f"zero_group_{i}": part.detach() for i, part in enumerate(partitions)}

    @torch.no_grad()
    def to_named(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All-gathers each group over its data-parallel ranks: call on all of them."""
        by_id = _gather_groups(self.optimizer, [local[f"zero_group_{i}"] for i in range(len(local))])
        missing = [n for k, n in self.names.items() if k not in by_id]
        if missing:
            raise LookupError(f"DeepSpeed's ZeRO groups hold no fp32 master for parameters {missing[:5]}")
        return {n: by_id[k] for k, n in self.names.items()}

    @torch.no_grad()
    def from_named(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = sorted(set(self.names.values()) - set(named))
        if missing:
            raise KeyError(f"lacks parameters: {missing[:5]}")
        local = {}
        for i, mine in enumerate(self.optimizer.single_partition_of_fp32_groups):
            start = dist.get_rank(self.optimizer.real_dp_process_group[i]) * mine.numel()
            end = start + mine.numel()
            part = torch.zeros_like(mine)  # the group's tail padding stays zero
            for param, offset in _offsets(self.optimizer, i):
                low, high = max(offset, start), min(offset + param.numel(), end)
                if low < high:  # the piece of this parameter inside the rank's partition
                    value = named[self.names[id(param)]].reshape(-1)
                    part[low - start:high - start] = value[low - offset:high - offset].to(part)
            local[f"zero_group_{i}"] = part
        return local


def weight_source(engine) -> WeightSource:
    """What the EMA of `engine`'s parameters averages (see the module's docstring). ZeRO-1/2 keep fp32 partitions
    in fp32 training too (the module's weights are all-gathered copies of them), so the EMA shards there alike."""
    zero12 = engine.zero_optimization() and engine.zero_optimization_stage() in (1, 2)
    return ZeroPartitions(engine) if zero12 else NamedWeights(engine)
