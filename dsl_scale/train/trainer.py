"""The training loop: one object owns the engine, data, objective, EMA, checkpoints and metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from dsl_scale.checkpoint.manager import Checkpointer
from dsl_scale.checkpoint.source import resolve_model_shape
from dsl_scale.config import Config, validate
from dsl_scale.core import seeding
from dsl_scale.core.batch import Prepared
from dsl_scale.core.device import collective_device, compute_device
from dsl_scale.data.batches import StepBatches, open_splits, train_batches
from dsl_scale.data.ensure import ensure_corpus
from dsl_scale.diffusion.objectives import build_objective
from dsl_scale.model.factory import build_dit
from dsl_scale.parallel import compile as compile_lib
from dsl_scale.parallel import cpu_compat, cross_entropy, pipeline, zero_init
from dsl_scale.parallel import engine as engine_lib
from dsl_scale.parallel.engine import activation_dtype, build_engine, resolved_precision
from dsl_scale.parallel.masters import full_masters, weight_source
from dsl_scale.parallel.topology import init_process_groups, process_group_backend, set_cpu_threads
from dsl_scale.tokenizer import get_tokenizer
from dsl_scale.train import preemption
from dsl_scale.train.ema import EMA
from dsl_scale.train.metrics import MetricsWriter, Progress, run_throughput
from dsl_scale.train.trackers import StepProfiler


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        set_cpu_threads()
        init_source = resolve_model_shape(cfg)  # model=from_checkpoint: the shape of init_from
        validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        process_group_backend(cfg.parallel.backend)  # CUDA asked for (or allocated) but absent: fail before any work
        self.stop_signal = preemption.StopSignal()  # SLURM's warning before a time limit or preemption
        cpu_compat.install()
        self.topo = init_process_groups(cfg.parallel.tp, cfg.parallel.pp, backend=cfg.parallel.backend)
        cpu_compat.seed_parallel_rng(cfg.train.seed, self.topo.tp_rank)
        self.run_dir = Path(cfg.run_dir)
        self.checkpointer = Checkpointer.for_run(cfg, self.topo, init_source)
        for note in self.checkpointer.start(cfg).notes:  # the agreed resume decision; the config checked, kept
            self.log(note)
        self.tokenizer = get_tokenizer(cfg.data.tokenizer)
        vocab = self.tokenizer.vocab_size
        ensure_corpus(cfg.data, cfg.model.seq_len, self.topo.rank, self.log)
        self.train_data, self.val_data = open_splits(cfg.data, cfg.model.seq_len, vocab, cfg.train.eval_examples)

        self.objective = build_objective(cfg.objective, self.tokenizer.mask_id, vocab, cfg.train.seed)
        build_context, whole = zero_init.partitioned_build(cfg, self.topo)
        with build_context:  # ZeRO-3: each parameter is partitioned as it is created
            model = build_dit(cfg.model, vocab, cfg.train.seed, causal=cfg.objective.name == "ar",
                              tp=self.topo.tp, pp=self.topo.pp, stage=self.topo.pp_rank, objective=cfg.objective,
                              mask_id=self.tokenizer.mask_id, sequence_parallel=cfg.parallel.sequence_parallel,
                              activation_dtype=activation_dtype(cfg.train.precision), whole=whole)
        # whole tensors go in (init_from, a layout-free tag): under ZeRO-3 the stage is gathered for them
        gather = self.checkpointer.needs_whole_parameters()
        with whole(list(model.parameters())) if gather else contextlib.nullcontext():
            line = self.checkpointer.load_before_engine(model, getattr(self.objective, "keys", None))
        if line:
            self.log(line)
        compiled = compile_lib.apply_compile(model, cfg.model.compile, cfg.parallel.zero_stage)
        self.nll_fn = cross_entropy.nll_function(cfg.model.loss_chunk_tokens, compiled=compiled)
        if compiled:
            self.log("model.compile: the blocks and the loss's per-chunk steps go through torch.compile")
        self.vocab_start = model.vocab_range[0]
        self.num_parameters = model.num_parameters()
        self.engine = build_engine(model, cfg, self.topo)
        engine_lib.skip_single_replica_allreduce(self.engine, self.topo.dp, cfg.parallel.zero_stage)
        self.ema = EMA(weight_source(self.engine), cfg.train.ema) if cfg.train.ema > 0 else None
        self.metrics = MetricsWriter(self.run_dir, enabled=self.topo.rank == 0, wandb=cfg.logging.wandb,
                                     config=dataclasses.asdict(cfg))
        self.step = 0
        self._resume()

    # ----------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        resumed = self.checkpointer.load_after_engine(self.engine)
        if resumed is None:
            return
        self.step, ema_state, tag_dir = resumed
        if self.ema is not None and ema_state is not None:
            self.ema.load_state_dict(ema_state)
        self.metrics.truncate_after(self.step)
        self.log(f"resumed from {tag_dir} at step {self.step}")

    def save(self) -> None:
        self.checkpointer.save(self.engine, self.step, {"config": dataclasses.asdict(self.cfg)},
                               self.ema.state_dict() if self.ema else None)

    def log(self, message: str) -> None:
        if self.topo.rank == 0:
            print(f"[dsl_scale] {message}", flush=True)

    def _dp_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over data-parallel ranks, left on the collective's device: reading it is the caller's sync."""
        group = ps.get_data_parallel_group()
        value = value.detach().float().to(collective_device(group), copy=True)
        dist.all_reduce(value, group=group)
        return value / self.topo.dp

    # ----------------------------------------------------------------------------------------------
    def _forward_loss(self, batch: Prepared) -> torch.Tensor:
        logits = self.engine(batch.inputs, batch.sigma, dropout_seeds=batch.dropout_seeds, **batch.model_kwargs)
        return self.objective.loss(logits, batch, self.nll_fn, self.vocab_start)

    def _micro_batches(self, tokens: torch.Tensor, first_position: int, key: int, batch_size: int,
                       stream: int) -> list[Prepared]:
        """Each sequence's draws (the objective's, and its dropout seed: used in training only) come from
        (seed, key, its position in the global batch), so they do not depend on the DP size. The batches are on
        the compute device, where the objective draws; the dropout seeds stay on the host, where the model reads
        them. Nothing here waits for the device: the tokens go over asynchronously, the positions are made there."""
        device, micro = compute_device(), self.cfg.train.micro_batch
        positions = range(first_position, first_position + len(tokens))
        on_device = torch.arange(first_position, first_position + len(tokens), device=device)
        batches = []
        for i, chunk in enumerate(tokens.to(device, non_blocking=True).split(micro)):
            batch = self.objective.prepare(chunk, on_device[i * micro:(i + 1) * micro], key, batch_size, stream)
            batch.dropout_seeds = seeding.per_example(positions[i * micro:(i + 1) * micro], self.cfg.train.seed,
                                                      seeding.DROPOUT_STREAM, key)
            batches.append(batch)
        return batches

    def train_step(self, batches: StepBatches) -> dict:
        """One optimizer step. The loss (and, where DeepSpeed reports one, the gradient norm) come back as device
        tensors, not read yet: `fit` reads a whole log interval's values at once (`_read_values`)."""
        t = self.cfg.train
        self.engine.train()
        local = batches.batch_at(self.step)  # [global_batch / dp, L], this DP rank's slice
        micro_batches = self._micro_batches(local, self.topo.dp_rank * len(local), self.step, t.global_batch,
                                            seeding.MASK_STREAM)
        lr = self.engine.get_lr()[0]
        if self.topo.pp > 1:
            losses = pipeline.run_schedule(self.engine, micro_batches, self._loss_fn, forward_only=False)
            loss = pipeline.last_stage_mean(losses)
            pipeline.finish_step(self.engine)
            grad_norm = engine_lib.step(self.engine, self.topo.tp_rank, self.cfg.optim.grad_clip)
        else:
            losses, grad_norm = [], None
            for batch in micro_batches:
                micro_loss = self._forward_loss(batch)
                self.engine.backward(micro_loss)
                grad_norm = engine_lib.step(self.engine, self.topo.tp_rank, self.cfg.optim.grad_clip)
                losses.append(micro_loss.detach())
            loss = torch.stack(losses).mean()
        if self.ema is not None:
            self.ema.update()
        return {
            "loss": self._dp_mean(loss),
            "lr": lr,
            "grad_norm": grad_norm if grad_norm is not None else float("nan"),
        }

    def _loss_fn(self, logits: torch.Tensor, batch: Prepared) -> torch.Tensor:
        return self.objective.loss(logits, batch, self.nll_fn, self.vocab_start)

    @torch.no_grad()
    def evaluate(self) -> float:
        """NELBO per token on fixed validation blocks with fixed times and masks (comparable across steps)."""
        per_rank = min(self.cfg.train.eval_examples, len(self.val_data)) // self.topo.dp
        if self.topo.pp > 1 and per_rank >= self.cfg.train.micro_batch:  # equal micro-batches for p2p
            per_rank -= per_rank % self.cfg.train.micro_batch
        n = per_rank * self.topo.dp
        if per_rank == 0:
            raise ValueError(f"validation split has {len(self.val_data)} blocks, fewer than the DP size")
        self.engine.eval()
        first = self.topo.dp_rank * per_rank
        tokens = torch.stack([torch.tensor(self.val_data[i], dtype=torch.long, device="cpu")
                              for i in range(first, first + per_rank)])
        micro_batches = self._micro_batches(tokens, first, 0, n, seeding.EVAL_STREAM)
        if self.topo.pp > 1:
            losses = pipeline.run_schedule(self.engine, micro_batches, self._loss_fn, forward_only=True)
            return float(self._dp_mean(pipeline.last_stage_mean(losses)))
        losses = torch.stack([self._forward_loss(b).double() for b in micro_batches])
        sizes = torch.tensor([len(b.inputs) for b in micro_batches], dtype=torch.float64, device=losses.device)
        return float(self._dp_mean((losses * sizes).sum() / sizes.sum()))

    def fit(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        tokens_per_step = t.global_batch * cfg.model.seq_len
        throughput = run_throughput(cfg.model, self.tokenizer.vocab_size, self.topo.world_size, compute_device(),
                                    resolved_precision(t.precision)) if self.topo.rank == 0 else None
        progress = Progress(self.step, t.steps, tokens_per_step, compute_device(), throughput, t.max_minutes)
        self.log(
            f"world {self.topo.world_size} (tp {self.topo.tp} × pp {self.topo.pp} × dp {self.topo.dp}), "
            f"ZeRO-{cfg.parallel.zero_stage}, {resolved_precision(t.precision)}, model {cfg.model.name} "
            f"({self.num_parameters / 1e6:.1f}M params on this rank), {len(self.train_data)} train blocks of "
            f"{cfg.model.seq_len}, global batch {t.global_batch}, {progress.plan}"
        )
        if throughput is not None:
            self.log(f"MFU against {throughput.peak_source}; {throughput.flops_per_token / 1e6:,.1f} MFLOP/token")
        batches = train_batches(self.train_data, cfg.data, t.global_batch, self.topo.dp_rank, self.topo.dp, t.seed)
        if self.step == 0:
            self._record_eval()
        progress.start()  # the step loop's clock and the time box (progress.deadline) start here, after the first eval
        preempted = False
        pending: list[dict] = []  # step records whose device values are not read yet
        profiler = StepProfiler(t.profile_steps, self.run_dir, self.topo.rank)
        while self.step < t.steps:
            started = time.perf_counter()
            self.step += 1
            profiler.before_step(self.step)
            record = {"step": self.step, **self.train_step(batches)}
            profiler.after_step(self.step)
            record.update(progress.fields(self.step, time.perf_counter() - started))
            evaluating = self.step % t.eval_every == 0 or self.step == t.steps
            out_of_time, preempted = self._stop_flags(time.perf_counter() > progress.deadline)
            if evaluating or out_of_time:
                record["val_loss"] = self._record_eval()
            pending.append(record)
            logging = self.step % t.log_every == 0 or self.step == 1
            saving = self.checkpointer.due(self.step, t.steps, forced=out_of_time or preempted)  # the cadence
            if logging or saving or evaluating:  # metrics.jsonl holds every step up to a checkpoint
                for done in _read_values(pending):
                    self.metrics.log_step(done)
                pending.clear()
            if logging:
                self.log(progress.line(record))
            if saving:
                self.save()
            if preempted:
                break
            if out_of_time:
                self.log(f"stopping after {t.max_minutes} minutes at step {self.step}")
                break
        profiler.close()
        self.metrics.close()
        if preempted and self.step < t.steps:
            self._exit_for_requeue()
        if t.save_final_weights:
            self.save_final_weights()
        self.checkpointer.release()

    def _exit_for_requeue(self) -> None:
        if self.topo.rank == 0:
            preemption.mark_for_requeue(self.run_dir, self.step, self.stop_signal.name)
        # The last barrier: a rank that exits first makes torchrun stop the others, so the note must exist by then.
        dist.barrier()
        self.log(f"{self.stop_signal.name}: checkpoint of step {self.step} saved; exiting with "
                 f"{preemption.REQUEUE_EXIT_CODE} so that the job is requeued")
        raise SystemExit(preemption.REQUEUE_EXIT_CODE)

    def save_final_weights(self) -> None:
        self.checkpointer.save_final_weights(self.engine.module, full_masters(self.engine))

    def _record_eval(self) -> float:
        val = self.evaluate()
        self.metrics.log_eval({"step": self.step, "val_loss": val, "val_ppl_bound": math.exp(min(val, 50))})
        self.log(f"step {self.step} val_loss {val:.4f}")
        return val

    def _stop_flags(self, past_deadline: bool) -> tuple[bool, bool]:
        """(out of time, preempted), the same on every rank, from one collective per step: rank 0's clock
        decides the first (wall clocks differ between ranks), any rank's stop signal the second (the rule of
        `StopSignal.agreed`)."""
        flags = torch.tensor([1.0 if past_deadline and self.topo.rank == 0 else 0.0,
                              1.0 if self.stop_signal.received else 0.0], device="cpu")
        flags = flags.to(collective_device(), non_blocking=True)  # a blocking copy to a GPU would be a second sync
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        out_of_time, preempted = flags.tolist()
        return out_of_time > 0, preempted > 0


def _read_values(records: list[dict]) -> list[dict]:
    """The records with their tensor values as floats: one device-to-host read per device for all of them."""
    found = [(record, name) for record in records for name, value in record.items() if isinstance(value, torch.Tensor)]
    by_device: dict[torch.device, list[tuple[dict, str]]] = {}
    for record, name in found:
        by_device.setdefault(record[name].device, []).append((record, name))
    for entries in by_device.values():
        values = torch.stack([record[name].detach().double().reshape(()) for record, name in entries]).tolist()
        for (record, name), value in zip(entries, values):
            record[name] = value
    return records
