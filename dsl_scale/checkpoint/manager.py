"""The trainer's one handle on checkpoints (as torchtitan's trainer calls its CheckpointManager): the start-up
decision, starting weights (`init_from`), resuming from `latest`, the save cadence with pruning, and the final
unsharded weights.

Start-up, in order (Trainer.__init__ calls each once):
  start()               rank 0 reads `latest` once and checks the new config against the checkpoint's; every
                        rank uses its answer (a stale network-filesystem view on another rank cannot split
                        them); rank 0 keeps this start's config (config.yaml, config.N.yaml)
  load_before_engine()  init_from's weights (a fresh start) or a layout-free tag's (a resume), before ZeRO
                        partitions them
  load_after_engine()   the engine's state, the step and the EMA from the agreed tag
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from dsl_scale.checkpoint import layout, relayout, training
from dsl_scale.checkpoint.consolidated import ConsolidatedCheckpoint, is_consolidated
from dsl_scale.checkpoint.gather import full_state_dict
from dsl_scale.checkpoint.init_from import load_into
from dsl_scale.checkpoint.resume_config import config_changes
from dsl_scale.checkpoint.run_lock import DEFAULT_LEASE_S, RunLock
from dsl_scale.checkpoint.save_guard import SaveGuard
from dsl_scale.checkpoint.source import Checkpoint, open_checkpoint
from dsl_scale.core.device import collective_device
from dsl_scale.core.files import atomic_path, atomic_write_text
from dsl_scale.parallel.topology import Topology


@dataclasses.dataclass
class StartDecision:
    """What rank 0 found at start, the same on every rank."""

    tag: str | None = None  # the tag to resume from; None: a fresh start
    layout_free: bool = False  # the tag is a consolidated (layout-free) checkpoint
    notes: list[str] = dataclasses.field(default_factory=list)  # allowed config changes, for the log
    error: str | None = None  # a refused config change: every rank raises it


class Checkpointer:
    def __init__(self, run_dir: str | Path, topo: Topology, zero_stage: int, keep: int, resume: bool = True,
                 save_every: int = 500, init_from: str | Checkpoint | None = None):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.topo = topo
        self.zero_stage = zero_stage
        self.keep = keep
        self.save_every = save_every
        self.resume_enabled = resume
        self.init_source = init_from
        self.ema_sharded = zero_stage == 3  # ZeRO-3: each rank keeps the EMA of its own partition
        self.decision: StartDecision | None = None
        self.lock: RunLock | None = None  # rank 0's hold on run_dir, taken by `start` before anything is written
        self.lock_lease_s = DEFAULT_LEASE_S
        self.reshard = "auto"  # checkpoint.reshard: a tag saved at another layout (relayout.py)
        self.save_guard = SaveGuard(self.root, check_lock=lambda: self.lock.check() if self.lock else None)

    @classmethod
    def for_run(cls, cfg, topo: Topology, init_from: Checkpoint | None = None) -> Checkpointer:
        t = cfg.train
        checkpointer = cls(cfg.run_dir, topo, cfg.parallel.zero_stage, t.keep_checkpoints, resume=t.resume,
                           save_every=t.save_every, init_from=init_from or cfg.init_from)
        checkpointer.save_guard.policy, checkpointer.lock_lease_s = t.on_save_error, t.lock_lease_minutes * 60
        checkpointer.reshard = cfg.checkpoint.reshard
        return checkpointer

    # start-up ----------------------------------------------------------------------------------------------
    def start(self, cfg=None) -> StartDecision:
        """The one agreed decision: rank 0 reads `latest` (and compares `cfg`, the new run config, with the
        checkpoint's), broadcasts it, and every rank uses the answer. Raises ValueError on every rank when the
        config changed in a way that breaks exact resume (unless train.allow_config_change)."""
        answer: list = [None]
        if _rank() == 0:
            try:
                self.lock = self.lock or RunLock(self.run_dir, self.lock_lease_s)
                took_over = self.lock.acquire()  # one writer per run directory (run_lock.py)
                answer[0] = self._decide(cfg)
                answer[0].notes[:0] = [f"warning: {took_over}"] if took_over else []
            except Exception as err:  # told to every rank, so that none waits in a collective for rank 0
                answer[0] = StartDecision(error=f"{type(err).__name__}: {err}")
        if dist.is_initialized():
            dist.broadcast_object_list(answer, src=0)
        self.decision = answer[0]
        if self.decision.error:
            raise ValueError(self.decision.error)
        return self.decision

    def _decide(self, cfg) -> StartDecision:
        tag = layout.read_latest(self.root) if self.resume_enabled else None
        decision = StartDecision(tag, tag is not None and is_consolidated(self.root / tag))
        if cfg is not None and tag is not None:
            saved = self._saved_config(tag, decision.layout_free)
            refused, allowed = config_changes(saved, dataclasses.asdict(cfg))
            if refused and not cfg.train.allow_config_change:
                decision.error = (
                    f"resuming {self.root / tag} with a changed config: {'; '.join(refused)}. These break exact "
                    "resume; restore them, start a new run_dir, or set train.allow_config_change=true")
                return decision
            decision.notes = [f"config changed since the checkpoint: {c}" for c in (*refused, *allowed)]
        if tag is not None and not decision.layout_free:  # saved at another layout: resharded for this run's
            run = {"tp": self.topo.tp, "pp": self.topo.pp, "dp": self.topo.dp, "zero_stage": self.zero_stage}
            decision.tag, note = relayout.prepare(self.root, tag, run, self.reshard)
            decision.layout_free = note is not None
            decision.notes += [note] if note else []
        if cfg is not None:
            self._keep_config(cfg)
        return decision

    def _saved_config(self, tag: str, layout_free: bool) -> dict:
        if layout_free:
            return ConsolidatedCheckpoint(self.root / tag).config
        from dsl_scale.checkpoint.zero_reader import TrainingCheckpoint

        return TrainingCheckpoint(self.root / tag).config

    def _keep_config(self, cfg) -> None:
        """config.yaml is this start's config; config.N.yaml keeps start N's (0, 1, ...) beside the earlier ones."""
        from omegaconf import OmegaConf

        self.root.mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
        n = len(list(self.run_dir.glob("config.*.yaml")))
        atomic_write_text(self.run_dir / f"config.{n}.yaml", text)
        atomic_write_text(self.run_dir / "config.yaml", text)

    @property
    def resuming(self) -> bool:
        return self._decided().tag is not None

    def _decided(self) -> StartDecision:
        if self.decision is None:
            raise RuntimeError("Checkpointer.start() must run before the checkpoint is loaded")
        return self.decision

    def needs_whole_parameters(self) -> bool:
        """Whether load_before_engine writes whole tensors (under ZeRO-3 the caller gathers the stage for it):
        the same answer on every rank."""
        decision = self._decided()
        return decision.layout_free if decision.tag else bool(self.init_source)

    # before the engine -----------------------------------------------------------------------------------
    def load_before_engine(self, model: torch.nn.Module, dsl_keys: torch.Tensor | None = None) -> str | None:
        """A fresh start with init_from: its weights; a resume from a layout-free tag: this rank's slice of its
        weights (every ZeRO stage then partitions them). Returns a line for the log, or None."""
        decision = self._decided()
        if decision.tag is not None:
            if decision.layout_free:
                from dsl_scale.checkpoint import reshard

                reshard.preload_weights(model, ConsolidatedCheckpoint(self.root / decision.tag), self.topo.tp_rank)
            return None
        if self.init_source:
            return self.init_from(model, self.init_source, dsl_keys)
        return None

    def init_from(self, model: torch.nn.Module, source: str | Checkpoint, dsl_keys: torch.Tensor | None = None) -> str:
        """Fine-tuning: weights from another run or export (the optimizer starts fresh). Parameters the source
        lacks keep their initialisation, and a DSL converter the source lacks is rebuilt from the loaded
        embedding. Returns a line for the log."""
        opened = source if isinstance(source, Checkpoint) else open_checkpoint(source)
        source = opened.source
        full, _ = opened.weights("auto")
        missing = [m for m in load_into(model, full, self.topo.tp_rank) if not m.endswith("inv_freq")]
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

    # with the engine ---------------------------------------------------------------------------------------
    def load_after_engine(self, engine) -> tuple[int, dict | None, Path] | None:
        """(step, EMA state, the tag's directory) restored from the agreed tag into `engine`, or None on a fresh
        start."""
        tag = self._decided().tag
        if tag is None:
            return None
        client_state, ema_state = training.load(engine, self.root, tag, self.topo, self.ema_sharded,
                                                self._decided().layout_free)
        step = int(client_state["step"])
        check_same_step(step)  # also: every rank has read the tag
        if _rank() == 0:
            relayout.cleanup(self.root, tag)
        return step, ema_state, self.root / tag

    def due(self, step: int, last_step: int, forced: bool = False) -> bool:
        """Whether step `step` saves: every save_every steps, the last step, and when stopping early."""
        return forced or step % self.save_every == 0 or step == last_step

    def save(self, engine, step: int, client_state: dict, ema_state: dict | None) -> Path:
        return training.save(engine, self.root, step, self.topo, {"step": step, **client_state}, ema_state,
                             self.ema_sharded, self.keep, self.save_guard)

    def release(self) -> None:
        """Give up the run directory (the run has ended; also done at exit)."""
        if self.lock is not None:
            self.lock.release()

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


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


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
