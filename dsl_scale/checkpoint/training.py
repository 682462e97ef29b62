"""The engine's own checkpoints: DeepSpeed's sharded state per tag, EMA beside it, and a `latest` pointer
that rank 0 replaces atomically only after every rank has finished writing (file names: layout.py).

A tag may instead hold a consolidated, layout-free checkpoint (tools/convert_checkpoint.py --to deepspeed):
the run then resumes from it at its own TP/PP/DP layout (reshard.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from dsl_scale.checkpoint import layout, reshard
from dsl_scale.checkpoint.consolidated import ConsolidatedCheckpoint, is_consolidated
from dsl_scale.checkpoint.save_guard import SaveGuard
from dsl_scale.core.device import compute_device
from dsl_scale.core.files import atomic_torch_save, atomic_write_text
from dsl_scale.parallel.topology import Topology


def ema_filename(topo: Topology) -> str:
    return layout.ema_name(topo.tp_rank, topo.pp_rank, topo.dp_rank)


def tensor_parallel_dims(module: torch.nn.Module) -> dict[str, int]:
    """name → the dimension along which tensor parallelism splits it (replicated tensors are absent)."""
    return {name: param.partition_dim for name, param in module.named_parameters()
            if getattr(param, "tensor_model_parallel", False)}


def save(engine, root: Path, step: int, topo: Topology, client_state: dict, ema_state: dict | None,
         ema_sharded: bool, keep: int, guard: SaveGuard | None = None) -> Path | None:
    """Write the checkpoint of `step`; None when `guard` skipped it or its write failed (on_save_error=continue)."""
    tag = layout.tag_for(step)
    guard = guard or SaveGuard(root)
    guard.install(engine)
    if not guard.begin(step, root / tag, layout.read_latest(root)):
        return None
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    with guard.recording():
        if topo.tp_rank == 0 and topo.dp_rank == 0:  # lets readers merge TP shards without building the model
            atomic_write_text(root / tag / layout.partitions_name(topo.pp_rank),
                              json.dumps(tensor_parallel_dims(engine.module)))
        if ema_state is not None and (ema_sharded or topo.dp_rank == 0):
            atomic_torch_save(ema_state, root / tag / ema_filename(topo))
        if topo.rank == 0:
            atomic_write_text(root / tag / layout.META, json.dumps(
                {"step": step, "tp": topo.tp, "pp": topo.pp, "dp": topo.dp, "ema_sharded": ema_sharded}
            ))
    if not guard.agree(step):  # every rank wrote its files, or none goes on to replace `latest`
        return None
    dist.barrier()
    if topo.rank == 0:
        atomic_write_text(root / layout.LATEST, tag)
        prune(root, keep, current=tag)
    dist.barrier()
    return root / tag


def prune(root: Path, keep: int, current: str) -> None:
    tags = sorted(p.name for p in root.glob(f"{layout.TAG_PREFIX}*") if p.is_dir())
    for old in tags[: max(len(tags) - keep, 0)]:
        if old != current:
            shutil.rmtree(root / old, ignore_errors=True)


def load(engine, root: Path, tag: str, topo: Topology, ema_sharded: bool,
         layout_free: bool | None = None) -> tuple[dict, dict | None]:
    """Restore engine state (weights, optimizer, LR schedule) and return (client_state, ema_state). `layout_free`:
    the start-up's agreed answer (None: look at the tag here)."""
    if is_consolidated(root / tag) if layout_free is None else layout_free:  # weights already in place
        client_state, ema_state, warnings = reshard.restore_engine(
            engine, ConsolidatedCheckpoint(root / tag), topo.tp_rank, topo.dp_rank, ema_sharded)
        for warning in warnings:
            if topo.rank == 0:
                print(f"[dsl_scale] warning: {warning}", flush=True)
        return client_state, ema_state
    try:
        path, client_state = engine.load_checkpoint(str(root), tag=tag)
    except Exception as err:  # DeepSpeed raises many kinds; name the checkpoint in every case
        raise RuntimeError(f"could not load checkpoint {root / tag}: {err}") from err
    if path is None:
        raise FileNotFoundError(f"checkpoint {root / tag} has no model states for this layout")
    ema_topo = topo if ema_sharded else Topology(**{**topo.__dict__, "dp_rank": 0})
    ema_path = root / tag / ema_filename(ema_topo)
    # onto this rank's device (the saving rank's GPU is recorded in the file and may be another rank's)
    ema_state = torch.load(ema_path, map_location=compute_device(), weights_only=True) if ema_path.exists() else None
    return client_state or {}, ema_state
