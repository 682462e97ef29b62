"""Training throughput, model FLOP utilisation (MFU) and the framework's overhead over a plain PyTorch loop.

    python tools/bench_train.py [--json] [--shapes small:256:8,tiny:128:16] [--steps 3] [--profile auto]

Peak: the best of several dense fp32 `torch.mm` (n × n, n = --mm-size) timings, measured in the same run
with the same threads: 2n³ FLOPs each.
Model FLOPs per trained token: 6·N + 12·n_blocks·L·H, N the weights applied to every token (QKV, attention
out, both MLP matrices of every block, and the output projection; not the embedding table, the per-sequence
adaLN/noise maps, norms or biases), 12·n_blocks·L·H the attention scores and their weighted sum (2·L·H
FLOPs each per token and block forward, ×3 with backward). MFU = model FLOPs / step time / peak.

Per shape (model preset : L : batch of sequences), one process, fp32, MDLM objective, the same DiT module:
- `ours`: the trainer's `train_step` (DeepSpeed engine, ZeRO-0, TP 1, PP 1, no EMA; seeded masking,
  gradient clipping, AdamW);
- `plain`: a loop a person would write: torch.rand masking, forward, the same MDLM loss, backward,
  clip_grad_norm_, torch AdamW.
Steps alternate between the two (after --warmup steps of each), so a drifting machine biases neither;
the medians are reported; overhead = ours / plain − 1. Targets: MFU ≥ 60 % for small at
L = 256, ≥ 45 % for tiny at L = 128, overhead ≤ 5 %. When an MFU falls short, a torch.profiler table of
one plain step's top operators (self CPU time) says where the time goes.

`syncs_per_step`: the host-device syncs of one training step (`train_step` and the per-step stop decision of
`fit`; the metrics are read once per log interval on top), counted on one extra step after the timed ones.
On CUDA every synchronizing call counts (torch.cuda.set_sync_debug_mode, DeepSpeed's and torch's included);
on the CPU, where nothing syncs, the tensor-to-Python reads (.item(), float(), int(), bool(), .tolist(),
.cpu(), .numpy()) made by dsl_scale's own code, which are syncs on a GPU. `sync_sites` says where they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TARGETS = {("small", 256): 0.60, ("tiny", 128): 0.45}
OVERHEAD_TARGET = 0.05
_PER_TOKEN_WEIGHTS = re.compile(r"^(blocks\.\d+\.(attn_qkv|attn_out|mlp_fc1|mlp_fc2)|output_layer\.linear)\.weight$")


def matmul_peak(size: int = 2048, repeats: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32,
                inner: int = 1) -> float:
    """Dense matmul FLOP/s: the best of `repeats` timings of `inner` n × n products each (after one warm-up),
    on `device` in `dtype` (tools/gpu_smoke.sh: bf16 on the GPU, inner > 1 so that launch gaps do not count)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * inner / best


def per_token_weights(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if _PER_TOKEN_WEIGHTS.match(name))


def model_flops_per_token(model: torch.nn.Module, n_blocks: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N + 12·n_blocks·L·H (see the module docstring)."""
    return 6 * per_token_weights(model) + 12 * n_blocks * seq_len * hidden


def model_preset(name: str) -> dict:
    """configs/model/NAME.yaml as ModelConfig fields (the `micro` preset nests them under `model:`)."""
    from omegaconf import OmegaConf

    path = REPO / "configs" / "model" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"model preset {path} does not exist")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    return cfg.get("model", cfg)


def bench_data(tmp: Path, seq_len: int, tokenizer: str, blocks: int) -> Path:
    """A prepared data dir with at least `blocks` training blocks (random words: content does not matter)."""
    import numpy as np

    from dsl_scale.data.prepare import prepare

    words = "the river city music history language light small ancient people north king water stone".split()
    rng = np.random.default_rng(0)
    n_docs = max(8, blocks * seq_len // 100)
    docs = [" ".join(rng.choice(words, size=150)) for _ in range(n_docs)]
    source = tmp / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp / f"data-L{seq_len}"
    prepare(str(source), str(out), seq_len, val_fraction=0.1, tokenizer=tokenizer, progress=False)
    return out


def build_trainer(preset: str, seq_len: int, batch: int, data: Path, run_dir: Path, tokenizer: str):
    from omegaconf import OmegaConf

    from dsl_scale.config import Config
    from dsl_scale.train.trainer import Trainer

    cfg = OmegaConf.merge(OmegaConf.structured(Config), {
        "model": {**model_preset(preset), "seq_len": seq_len, "dropout": 0.0},
        "data": {"path": str(data), "source": "", "tokenizer": tokenizer},
        "train": {"global_batch": batch, "micro_batch": batch, "precision": "fp32", "ema": 0.0, "resume": False},
        "optim": {"warmup_steps": 1}, "run_dir": str(run_dir)})
    return Trainer(OmegaConf.to_object(cfg))


class PlainLoop:
    """The same module and loss, trained the way a short PyTorch script would."""

    def __init__(self, trainer):
        self.model, self.objective = trainer.engine.module, trainer.objective
        self.nll_fn, self.vocab_start = trainer.nll_fn, trainer.vocab_start
        o = trainer.cfg.optim
        self.clip = o.grad_clip
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)

    def step(self, tokens: torch.Tensor) -> float:
        from dsl_scale.diffusion import mdlm
        from dsl_scale.diffusion.objectives import Prepared
        from dsl_scale.diffusion.schedules import log_linear_sigma

        eps = self.objective.eps
        t = torch.rand(tokens.shape[0])
        z, masked = mdlm.mask_tokens(tokens, t, torch.rand(tokens.shape), self.objective.mask_id, eps)
        batch = Prepared(z, tokens, log_linear_sigma(t, eps).float(), {"masked": masked, "t": t})
        self.model.train()
        loss = self.objective.loss(self.model(batch.inputs, batch.sigma), batch, self.nll_fn, self.vocab_start)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class SyncCounter:
    """Counts host-device syncs inside a `with` block on `device` (see the module docstring): `count`, and
    `sites` ("file:line" → count)."""

    READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
    PACKAGE = REPO / "dsl_scale"

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.sites: Counter[str] = Counter()
        self._saved: dict[str, object] = {}

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def __enter__(self) -> SyncCounter:
        if self.device.type == "cuda":
            self._caught = warnings.catch_warnings(record=True)
            self._records = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            return self
        for name in self.READS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        return self

    def _counting(self, read):
        def counted(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if Path(caller).is_relative_to(self.PACKAGE):
                self.sites[f"{Path(caller).relative_to(REPO)}:{sys._getframe(1).f_lineno}"] += 1
            return read(tensor, *args, **kwargs)
        return counted

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
            self._caught.__exit__(*exc)
            for w in self._records:
                if "synchroniz" in str(w.message):
                    self.sites[f"{w.filename}:{w.lineno}"] += 1
            return
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def count_step_syncs(trainer, batches) -> SyncCounter:
    """One training step and its stop decision, as `fit` runs them, under a SyncCounter."""
    from dsl_scale.core.device import compute_device

    with SyncCounter(compute_device()) as syncs:
        trainer.train_step(batches)
        trainer._stop_flags(False)
    return syncs


_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul"}


def profile_step(plain: PlainLoop, tokens: torch.Tensor, top: int = 12) -> dict:
    """One plain step under torch.profiler: the operators with the most self CPU time, and the share of
    all self time spent in dense matmuls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        plain.step(tokens)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    matmul = sum(e.self_cpu_time_total for e in events if e.key in _MATMUL_OPS) / total
    return {"matmul_share": matmul, "top": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3,
                                             "share": e.self_cpu_time_total / total, "calls": e.count}
                                            for e in events[:top]]}


def bench_shape(preset: str, seq_len: int, batch: int, steps: int, warmup: int, peak: float, tokenizer: str,
                profile: str) -> dict:
    from dsl_scale.data.loader import GlobalBatches

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data = bench_data(Path(tmp), seq_len, tokenizer, blocks=batch * (steps + warmup + 1))
        trainer = build_trainer(preset, seq_len, batch, data, Path(tmp) / "run", tokenizer)
        batches = GlobalBatches(trainer.train_data, batch, 0, 1, seed=0)
        plain = PlainLoop(trainer)
        m = trainer.cfg.model
        flops_per_step = model_flops_per_token(trainer.engine.module, m.n_blocks, m.hidden, seq_len) * batch * seq_len
        ours, theirs = [], []
        for i in range(warmup + steps):
            trainer.step = i
            started = time.perf_counter()
            trainer.train_step(batches)
            ours_s = time.perf_counter() - started
            tokens = batches.batch_at(i).long()
            started = time.perf_counter()
            plain.step(tokens)
            plain_s = time.perf_counter() - started
            if i >= warmup:
                ours.append(ours_s)
                theirs.append(plain_s)
        trainer.step = warmup + steps
        syncs = count_step_syncs(trainer, batches)
        step_s, plain_s = statistics.median(ours), statistics.median(theirs)
        row = {
            "model": preset, "seq_len": seq_len, "batch": batch, "tokenizer": tokenizer,
            "params": trainer.num_parameters, "per_token_weights": per_token_weights(trainer.engine.module),
            "flops_per_step": flops_per_step, "step_s": step_s, "plain_step_s": plain_s,
            "tokens_per_s": batch * seq_len / step_s, "achieved_flops": flops_per_step / step_s,
            "peak_flops": peak, "mfu": flops_per_step / step_s / peak, "plain_mfu": flops_per_step / plain_s / peak,
            "overhead": step_s / plain_s - 1, "overhead_target": OVERHEAD_TARGET,
            "mfu_target": TARGETS.get((preset, seq_len)), "steps": steps, "threads": torch.get_num_threads(),
            "syncs_per_step": syncs.count, "sync_sites": dict(syncs.sites),
        }
        short = row["mfu_target"] is not None and row["mfu"] < row["mfu_target"]
        if profile == "always" or (profile == "auto" and short):
            row["profile"] = profile_step(plain, batches.batch_at(0).long())
        return row


def parse_shapes(text: str) -> list[tuple[str, int, int]]:
    shapes = []
    for part in text.split(","):
        fields = part.split(":")
        if len(fields) != 3:
            raise ValueError(f"--shapes entry {part!r} must be PRESET:SEQ_LEN:BATCH (e.g. tiny:128:16)")
        shapes.append((fields[0], int(fields[1]), int(fields[2])))
    return shapes


def print_table(rows: list[dict], peak: float) -> None:
    print(f"dense fp32 matmul peak {peak / 1e9:.1f} GFLOP/s ({rows[0]['threads'] if rows else '?'} threads)")
    print(f"{'model':<12}{'L':>5}{'batch':>6}{'params':>9}{'tok/s':>9}{'GFLOP/s':>9}{'MFU':>7}{'target':>8}"
          f"{'plain MFU':>10}{'ours s':>8}{'plain s':>8}{'overhead':>9}{'syncs':>6}")
    for r in rows:
        target = f"{r['mfu_target']:.0%}" if r["mfu_target"] else "–"
        print(f"{r['model']:<12}{r['seq_len']:>5}{r['batch']:>6}{r['params'] / 1e6:>8.1f}M{r['tokens_per_s']:>9.0f}"
              f"{r['achieved_flops'] / 1e9:>9.1f}{r['mfu']:>7.1%}{target:>8}{r['plain_mfu']:>10.1%}"
              f"{r['step_s']:>8.2f}{r['plain_step_s']:>8.2f}{r['overhead']:>+9.1%}{r['syncs_per_step']:>6}")
    for r in rows:
        if "profile" in r:
            share = r["profile"]["matmul_share"]
            print(f"\nwhere a plain step's time goes ({r['model']}, L={r['seq_len']}; self CPU time): dense matmuls "
                  f"{share:.0%} of it, running at ~{r['plain_mfu'] / max(share, 1e-9):.0%} of the peak; the rest is "
                  "elementwise, norm, attention and optimizer work")
            for p in r["profile"]["top"]:
                print(f"  {p['share']:>6.1%} {p['self_ms']:>9.1f} ms {p['calls']:>6}×  {p['op']}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result JSON as the last line")
    parser.add_argument("--shapes", default="small:256:8,tiny:128:16", help="PRESET:SEQ_LEN:BATCH,...")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each loop")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the launchers' policy)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from dsl_scale.parallel.topology import init_process_groups, set_cpu_threads

    set_cpu_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    init_process_groups(1, 1)
    peak = matmul_peak(args.mm_size)
    rows = [bench_shape(p, L, b, args.steps, args.warmup, peak, args.tokenizer, args.profile)
            for p, L, b in parse_shapes(args.shapes)]
    peak = max(peak, matmul_peak(args.mm_size))  # again after the runs: the machine's best, not a busy moment
    for r in rows:
        r["peak_flops"], r["mfu"] = peak, r["achieved_flops"] / peak
        r["plain_mfu"] = r["flops_per_step"] / r["plain_step_s"] / peak
    print_table(rows, peak)
    if args.json:
        print(json.dumps({"rows": rows, "peak_flops": peak, "mm_size": args.mm_size}))
    return rows


if __name__ == "__main__":
    main()
