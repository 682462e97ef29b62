"""Resuming training from a consolidated (layout-free) checkpoint at whatever TP/PP/DP/ZeRO layout the
run uses now: each rank reads only its tensor-parallel slice of every whole tensor from the safetensors files.

Weights go into the module before DeepSpeed wraps it (`preload_weights`), so every ZeRO stage builds its
partitions from them; AdamW's moments, its update count and the LR schedule go into the engine
afterwards (`restore_engine`). The moments are written where each ZeRO stage keeps them: the torch
optimizer's per-parameter state (stage 0), the fp32 flat partition at each parameter's fragment address
(stages 1–2), or the stage-3 partition through DeepSpeed's own `set_full_hp_param`.
"""

from __future__ import annotations

import torch

from dsl_scale.checkpoint.consolidated import ConsolidatedCheckpoint
from dsl_scale.checkpoint.init_from import _shard, load_into
from dsl_scale.core import patches

MOMENTS = ("exp_avg", "exp_avg_sq")
ZERO_OPTIMIZER_STATE = "deepspeed-zero-optimizer-state"  # a requirement in dsl_scale/core/patches.py


def preload_weights(module: torch.nn.Module, checkpoint: ConsolidatedCheckpoint, tp_rank: int) -> None:
    targets = dict([*module.named_parameters(), *module.named_buffers()])
    missing = load_into(module, checkpoint.local("model", targets, tp_rank), tp_rank)
    if missing:
        raise KeyError(f"{checkpoint.dir}: model.safetensors lacks tensors this model has: {missing[:8]}")


def restore_engine(engine, checkpoint: ConsolidatedCheckpoint, tp_rank: int, dp_rank: int,
                   ema_sharded: bool) -> tuple[dict, dict | None, list[str]]:
    """Moments, update count and LR schedule into `engine`; returns (client_state, EMA state for this rank,
    warnings)."""
    warnings = []
    named = dict(engine.module.named_parameters())
    if checkpoint.has_optimizer:
        step = checkpoint.optimizer_step()
        targets = {name: _like(param) for name, param in named.items()}
        for key in MOMENTS:
            _restore_moment(engine, named, checkpoint.local(key, targets, tp_rank), key, step, tp_rank)
    else:
        warnings.append(f"{checkpoint.dir} holds no optimizer state: AdamW restarts from zero moments")
    if checkpoint.lr_scheduler and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(dict(checkpoint.lr_scheduler))
        for optimizer in {id(o): o for o in (engine.optimizer, getattr(engine.optimizer, "optimizer", None))
                          if o is not None}.values():
            for group, lr in zip(optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
                group["lr"] = lr
    engine.global_steps = checkpoint.step
    engine.global_samples = checkpoint.step * engine.train_batch_size()
    ema = None
    if "ema" in checkpoint.available():
        local = checkpoint.local("ema", {name: _like(param) for name, param in named.items()}, tp_rank)
        lacking = sorted(set(named) - set(local))
        if lacking:
            raise KeyError(f"{checkpoint.dir}: ema.safetensors lacks parameters: {lacking[:8]}")
        ema = {name: _ema_slice(local[name], param, tp_rank, dp_rank, ema_sharded) for name, param in named.items()}
    return {"step": checkpoint.step}, ema, warnings


def _ema_slice(full: torch.Tensor, param, tp_rank: int, dp_rank: int, sharded: bool) -> torch.Tensor:
    local = _shard(full, _like(param), tp_rank).float()
    if not (sharded and hasattr(param, "ds_tensor")):
        return local.clone()
    size = param.ds_tensor.numel()
    flat = torch.nn.functional.pad(local.flatten(), (0, size * (dp_rank + 1) - local.numel()))
    return flat[size * dp_rank: size * (dp_rank + 1)].clone()


class _Shape:
    """The TP attributes and (unpartitioned) shape of a parameter, which ZeRO-3 replaces by an empty tensor."""

    def __init__(self, param):
        self.shape = tuple(getattr(param, "ds_shape", param.shape))
        self.partition_dim = getattr(param, "partition_dim", 0)
        self.tensor_model_parallel = getattr(param, "tensor_model_parallel", False)


def _like(param):
    return _Shape(param)


def _masters(optimizer, named: dict) -> dict[str, torch.Tensor]:
    """name → the tensor AdamW updates for that parameter without ZeRO: the parameter itself (fp32), or its fp32
    master copy under DeepSpeed's bf16 wrapper (FP16_UnfusedOptimizer: fp16_groups[i][j] ↔ fp32_groups[i][j]),
    whose AdamW state is keyed by the copies (state keyed by the bf16 parameter would never be read)."""
    masters = {id(p): p for p in named.values()}
    for low, high in zip(getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", [])):
        masters.update({id(lp): hp for lp, hp in zip(low, high)})
    return {name: masters[id(param)] for name, param in named.items()}


def _group_of(optimizer: torch.optim.Optimizer, tensor: torch.Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is tensor for p in group["params"]):
            return group
    raise KeyError(f"a tensor of shape {tuple(tensor.shape)} is in none of the optimizer's parameter groups")


def _step_tensor(step: int, group: dict, tensor: torch.Tensor) -> torch.Tensor:
    """AdamW's update count from the checkpoint, where torch's Adam keeps it for `tensor` (what it updates): an fp32
    scalar on the tensor's device when its group is fused or capturable (the fused CUDA kernel reads it there),
    else on the CPU. It replaces any count already there (DeepSpeed's bf16 wrapper creates the state with one
    step on zero gradients when it is built)."""
    on_device = group.get("fused") or group.get("capturable")
    return torch.tensor(float(step), dtype=torch.float32, device=tensor.device if on_device else "cpu")


def write_adam_state(optimizer: torch.optim.Optimizer, tensor: torch.Tensor, step: int,
                     group: dict | None = None) -> dict:
    """`tensor`'s AdamW state with the checkpoint's update count; the moments are the caller's to fill, on the
    tensor's device in fp32 (where AdamW reads them). `group`: the tensor's parameter group, when the optimizer's
    groups do not list it (DeepSpeed's ZeRO-3 empties their `params` outside a step)."""
    state = optimizer.state[tensor]
    state["step"] = _step_tensor(step, _group_of(optimizer, tensor) if group is None else group, tensor)
    return state


@torch.no_grad()
def _restore_moment(engine, named: dict, full: dict[str, torch.Tensor], key: str, step: int, tp_rank: int) -> None:
    lacking = sorted(set(named) - set(full))
    if lacking:
        raise KeyError(f"the checkpoint's optimizer state lacks parameters: {lacking[:8]}")
    local = {name: _shard(full[name], _like(p), tp_rank).float() for name, p in named.items()}
    optimizer = engine.optimizer
    stage = engine.zero_optimization_stage() if engine.zero_optimization() else 0
    if stage > 0 or hasattr(optimizer, "fp32_groups"):  # DeepSpeed's optimizer internals, as 0.19 lays them out
        patches.require(ZERO_OPTIMIZER_STATE)
    if stage == 0:
        inner = getattr(optimizer, "optimizer", optimizer)  # the torch AdamW under DeepSpeed's bf16 wrapper
        for name, master in _masters(optimizer, named).items():  # fp32 moments, where the master weights are
            state = write_adam_state(inner, master, step)
            state[key] = local[name].to(device=master.device, dtype=torch.float32).reshape(master.shape).clone()
    elif stage in (1, 2):
        names = {id(p): n for n, p in named.items()}
        for group, flat in enumerate(optimizer.single_partition_of_fp32_groups):
            state = write_adam_state(optimizer.optimizer, flat, step)
            buffer = state.setdefault(key, torch.zeros_like(flat))
            for param in optimizer.bit16_groups[group]:
                mapping = getattr(param, "_hp_mapping", None)
                if mapping is None:  # no fragment of this parameter in this rank's partition
                    continue
                lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                value = local[names[id(param)]].flatten().narrow(0, lp.start, lp.numel)
                buffer.narrow(0, hp.start, hp.numel).copy_(value)
    else:
        inner = optimizer.optimizer
        for sub_group, flat in enumerate(optimizer.fp32_partitioned_groups_flat):
            group = inner.param_groups[optimizer.sub_group_to_group_id[sub_group]]
            state = write_adam_state(inner, flat, step, group)
            state.setdefault(key, torch.zeros_like(flat))
        for name, param in named.items():
            optimizer.set_full_hp_param(local[name], param, key)
