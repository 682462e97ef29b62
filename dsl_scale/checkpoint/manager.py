"""The trainer's one handle on checkpoints (as torchtitan's trainer calls its CheckpointManager): starting
weights (`init_from`), resuming from `latest`, saving with pruning, and the final unsharded weights."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from dsl_scale.checkpoint import layout, training
from dsl_scale.checkpoint.gather import full_state_dict
from dsl_scale.checkpoint.init_from import load_full_weights, load_into
from dsl_scale.core.device import collective_device
from dsl_scale.core.files import atomic_path
from dsl_scale.parallel.topology import Topology


class Checkpointer:
    def __init__(self, run_dir: str | Path, topo: Topology, zero_stage: int, keep: int, resume: bool = True):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.topo = topo
        self.zero_stage = zero_stage
        self.keep = keep
        self.resume_enabled = resume
        self.ema_sharded = zero_stage == 3  # ZeRO-3: each rank keeps the EMA of its own partition

    def will_resume(self) -> bool:
        """Whether `resume` will find a checkpoint (then `init_from` is not applied: the run continues)."""
        return self.resume_enabled and layout.read_latest(self.root) is not None

    # before the engine -----------------------------------------------------------------------------------
    def init_from(self, model: torch.nn.Module, source: str, dsl_keys: torch.Tensor | None = None) -> str:
        """Fine-tuning: weights from another run or export (the optimizer starts fresh). Parameters the source
        lacks keep their initialisation, and a DSL converter the source lacks is rebuilt from the loaded
        embedding. Returns a line for the log."""
        full = load_full_weights(source)
        missing = load_into(model, full, self.topo.tp_rank)
        unexpected = [m for m in missing if not m.startswith("converter.")]
        if unexpected:
            raise KeyError(f"{source} lacks model tensors: {unexpected[:8]}")
        if any(name.startswith("converter.") for name in missing):
            # the source's whole table (so the embedding is there): every TP rank has the [MASK] row
            model.init_converter(full["vocab_embed.weight"][model.cfg.mask_id])
        elif hasattr(model, "converter") and dsl_keys is not None and not torch.equal(model.converter.keys, dsl_keys):
            raise ValueError(f"{source}: its DSL keys differ from objective.key_dim/key_seed")
        params = dict(model.named_parameters())
        owned = [p for n, p in params.items() if n in missing
                 and (self.topo.tp_rank == 0 or getattr(p, "tensor_model_parallel", False))]
        group = ps.get_model_parallel_group()
        count = torch.tensor([sum(p.numel() for p in owned)], device=collective_device(group))
        dist.all_reduce(count, group=group)
        new = ", ".join(sorted(n for n in missing if n in params)) or "none"
        return f"initialised from {source}; new parameters: {int(count)} ({new})"

    def preload(self, module: torch.nn.Module) -> None:
        """A layout-free `latest` puts its weights in before ZeRO partitions them (see training.py)."""
        if self.resume_enabled:
            training.preload_layout_free(module, self.root, self.topo)

    # with the engine ---------------------------------------------------------------------------------------
    def resume(self, engine) -> tuple[int, dict | None, Path] | None:
        """(step, EMA state, the tag's directory) restored from `latest` into `engine`, or None when there is
        nothing to resume."""
        if not self.resume_enabled:
            return None
        tag = agreed_latest(self.root)
        if tag is None:
            return None
        client_state, ema_state = training.load(engine, self.root, tag, self.topo, self.ema_sharded)
        step = int(client_state["step"])
        check_same_step(step)
        return step, ema_state, self.root / tag

    def save(self, engine, step: int, client_state: dict, ema_state: dict | None) -> Path:
        return training.save(engine, self.root, step, self.topo, {"step": step, **client_state}, ema_state,
                             self.ema_sharded, self.keep)

    def save_final_weights(self, module: torch.nn.Module, masters: dict[str, torch.Tensor] | None) -> Path | None:
        """run_dir/final/model.safetensors: every tensor unsharded, in fp32, from any layout (written by rank 0).
        `masters`: name → the whole fp32 master weight of each parameter of this rank's module under bf16
        training (parallel/masters.py: full_masters), written instead of its bf16 copy; None in fp32 training."""
        from safetensors.torch import save_file

        state = full_state_dict(module, self.zero_stage, masters)
        if state is None:
            return None
        out = self.run_dir / "final" / "model.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        source = "module weights (fp32 training)" if masters is None else "fp32 master weights (bf16 training)"
        with atomic_path(out) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                      metadata={"dtype": "float32", "parameters_from": source})
        return out


def agreed_latest(root: Path) -> str | None:
    """The checkpoint tag to resume from, as rank 0 reads it, on every rank (None: start from scratch). A
    pointer replaced mid-start (or a stale network-filesystem view) then cannot split the ranks."""
    answer = [layout.read_latest(root) if not dist.is_initialized() or dist.get_rank() == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(answer, src=0)
    return answer[0]


def check_same_step(step: int) -> None:
    """Every rank must have restored the same step; anything else means mixed checkpoints."""
    if not dist.is_initialized():
        return
    device = collective_device()
    low, high = torch.tensor([float(step)], device=device), torch.tensor([float(step)], device=device)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(f"ranks resumed from different steps ({int(low.item())} … {int(high.item())})")
