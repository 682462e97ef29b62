"""Data-path throughput: tokens/s the readers deliver to one rank, beside what the trainer consumes.

    python tools/bench_data.py [--json] [--source wikipedia-sample] [--epochs 2] [--workers 0,1,2]
                               [--index-blocks 1000000000]

Delivered: the trainer's own data path (`open_splits` + `train_batches`, DP size 1, so the rank gets
the whole global batch of 16 blocks) serving the steps of `--epochs` epochs after one warm-up step
that starts the workers (so every shard is read, webdataset ones twice); tokens/s = steps × 16 × L /
wall time. Measured per
format (MDS, webdataset) and worker count, at L = 128 (the `tiny` preset) and L = 1024 (`small`), on
`--source` prepared in both formats into a temporary directory (256 KiB shards).

Consumed: a plain single-process fp32 training step of the DiT of each preset at its own L (forward,
cross-entropy over all positions, backward, AdamW step) on a batch of `--train-batch` sequences (default
tiny 16 = the trainer's global batch, small 2 to keep the run short), after one warm-up step;
tokens/s = batch × L / median step time. This is an upper bound for the trainer's consumption (no DeepSpeed,
no masking, no EMA), so the ratios are conservative. ratio = delivered / consumed by the preset of the
same L; `ratio_small` = delivered / consumed by `small`. Target: ratio_small ≥ 20 everywhere.

Shard hash checks: tokens/s with `data.check_hashes` on against off (the reference, in the same run,
alternated `--hash-repeats` times, medians), timed from the first step so that every shard's first-read
xxh3 check is inside the timing; target: a cost of at most 5 %. On a shared machine that difference is mostly
noise, so the checks' own work is also timed alone: one xxh3 of every train shard, as a share of the
unchecked delivery time of the same epochs.

Index memory: the peak Python-traced memory (tracemalloc) of computing one rank's block indices for steps
0, 10^6 and 3·10^7 over a virtual index of `--index-blocks` blocks (default 10^9, about 1 T tokens at
L = 1024); the block order is evaluated on the fly, where a materialised permutation would take 8 bytes
per block per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from omegaconf import OmegaConf

TARGET = 20.0
HASH_TARGET = 5.0  # percent of the delivered tokens/s that the shard hash checks may cost
GLOBAL_BATCH = 16
PRESETS = {"tiny": 128, "small": 1024}


def prepare_both(source: str, root: Path) -> dict[int, Path]:
    from dsl_scale.data.prepare import prepare
    from dsl_scale.data.sources import iter_documents

    corpus = root / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as f:  # read the source once for both lengths
        for doc in iter_documents(source):
            f.write(json.dumps({"text": doc}) + "\n")
    dirs = {}
    for seq_len in sorted(set(PRESETS.values())):
        dirs[seq_len] = root / f"L{seq_len}"
        prepare(str(corpus), str(dirs[seq_len]), seq_len, shard_size_bytes=1 << 18, fmt="both",
                workers=2, progress=False)
    return dirs


def delivered(path: Path, seq_len: int, fmt: str, workers: int, epochs: float, check_hashes: bool = True,
              warm_up: bool = True) -> float:
    from dsl_scale.config import DataConfig
    from dsl_scale.data.batches import open_splits, train_batches

    data = DataConfig(path=str(path), source="", format=fmt, workers=workers, check_hashes=check_hashes)
    train, _ = open_splits(data, seq_len, 50258, val_blocks=1)
    batches = train_batches(train, data, GLOBAL_BATCH, 0, 1, seed=0)
    steps = max(1, round(epochs * len(train) / GLOBAL_BATCH))
    if warm_up:
        batches.batch_at(0)
    started = time.perf_counter()
    for step in range(0 if not warm_up else 1, steps + 1):
        batches.batch_at(step)
    seconds = time.perf_counter() - started
    batches.close()
    return (steps + (not warm_up)) * GLOBAL_BATCH * seq_len / seconds


def hash_cost(path: Path, seq_len: int, fmt: str, epochs: float, repeats: int) -> dict:
    """Tokens/s with the shard hash checks on and off (the reference), in one process, alternated; timed from
    the first step, so every shard's check (its first read) is inside the timing. Medians of `repeats`."""
    from dsl_scale.data.shard_hash import fast_hash

    on, off = [], []
    for _ in range(repeats):
        off.append(delivered(path, seq_len, fmt, 0, epochs, check_hashes=False, warm_up=False))
        on.append(delivered(path, seq_len, fmt, 0, epochs, check_hashes=True, warm_up=False))
    checked, reference = statistics.median(on), statistics.median(off)
    entries = json.loads((path / "manifest.json").read_text())["shards"][fmt]["train"]
    hashing = []
    for _ in range(repeats):  # the checks' own work: one xxh3 of every train shard (what a process does once)
        started = time.perf_counter()
        for entry in entries:
            fast_hash(str(path / entry["file"]))
        hashing.append(time.perf_counter() - started)
    delivery_s = max(1, round(epochs * sum(e["samples"] for e in entries) / GLOBAL_BATCH)) * GLOBAL_BATCH * seq_len
    delivery_s /= reference
    return {"format": fmt, "seq_len": seq_len, "checked_tokens_per_s": round(checked),
            "reference_tokens_per_s": round(reference), "cost_percent": round(100 * (1 - checked / reference), 2),
            "hash_ms": round(1e3 * statistics.median(hashing), 2),
            "hash_share_percent": round(100 * statistics.median(hashing) / delivery_s, 3)}


class VirtualIndex:
    """`n` blocks that are never read: GlobalBatches.indices_at only needs the count."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        raise NotImplementedError("a virtual index has no block contents")


def index_peak_bytes(n_blocks: int, steps: tuple[int, ...] = (0, 10**6, 3 * 10**7)) -> int:
    from dsl_scale.data.loader import GlobalBatches

    GlobalBatches(VirtualIndex(2), 1, 0, 1, seed=0).indices_at(0)  # lazy imports on first use: not the index's
    tracemalloc.start()
    try:
        batches = GlobalBatches(VirtualIndex(n_blocks), GLOBAL_BATCH, 0, 1, seed=0)
        for step in steps:
            batches.indices_at(step)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def consumed(preset: str, batch: int, repeats: int) -> float:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from dsl_scale.config import ModelConfig
    from dsl_scale.model.dit import DiT
    from dsl_scale.model.factory import build_dit
    from dsl_scale.parallel import cpu_compat
    from dsl_scale.parallel.topology import free_port

    cpu_compat.install()
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    fields = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parent.parent
                                                   / f"configs/model/{preset}.yaml"))
    model_cfg = ModelConfig(**fields)
    model = build_dit(model_cfg, 50258, seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 50257, (batch, model_cfg.seq_len))
    sigma = torch.full((batch,), 0.5)
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        loss = DiT.token_nll(model(tokens, sigma), tokens).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up (allocations, AdamW state)
            times.append(time.perf_counter() - started)
    return batch * model_cfg.seq_len / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--source", default="wikipedia-sample")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs of train blocks to time")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--train-repeats", type=int, default=2, help="timed training steps per preset")
    parser.add_argument("--train-batch", default="tiny:16,small:2", help="sequences per timed training step")
    parser.add_argument("--index-blocks", type=int, default=10**9, help="blocks of the virtual index (memory)")
    parser.add_argument("--hash-repeats", type=int, default=5, help="alternated runs per shard-hash cost figure")
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    train_batch = {k: int(v) for k, v in (item.split(":") for item in args.train_batch.split(","))}
    consumption = {preset: consumed(preset, train_batch[preset], args.train_repeats) for preset in PRESETS}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        dirs = prepare_both(args.source, Path(tmp))
        for preset, seq_len in PRESETS.items():
            for fmt in ("mds", "wds"):
                for workers in map(int, args.workers.split(",")):
                    rate = delivered(dirs[seq_len], seq_len, fmt, workers, args.epochs)
                    rows.append({"format": fmt, "workers": workers, "seq_len": seq_len, "tokens_per_s": round(rate),
                                 "consumer": preset, "consumed_tokens_per_s": round(consumption[preset], 1),
                                 "ratio": round(rate / consumption[preset], 1),
                                 "ratio_small": round(rate / consumption["small"], 1)})
        costs = [hash_cost(dirs[seq_len], seq_len, fmt, args.epochs, args.hash_repeats)
                 for seq_len in sorted(set(PRESETS.values())) for fmt in ("mds", "wds")]
    print("trainer consumption (plain fp32 training step): "
          + ", ".join(f"{p} {c:,.0f} tokens/s (batch {train_batch[p]})" for p, c in consumption.items()))
    print(f"{'format':6s} {'workers':>7s} {'L':>5s} {'delivered tok/s':>16s} {'consumer':>8s} {'ratio':>9s} "
          f"{'vs small':>9s}")
    for r in rows:
        print(f"{r['format']:6s} {r['workers']:>7d} {r['seq_len']:>5d} {r['tokens_per_s']:>16,} {r['consumer']:>8s} "
              f"{r['ratio']:>9,.1f} {r['ratio_small']:>9,.1f}")
    worst = min(r["ratio_small"] for r in rows)
    print(f"lowest delivered / small-consumed: {worst:,.1f} (target >= {TARGET:g}): "
          f"{'met' if worst >= TARGET else 'NOT met'}")
    for c in costs:
        print(f"shard hash checks ({c['format']}, L {c['seq_len']}, 0 workers): {c['checked_tokens_per_s']:,} tokens/s "
              f"against {c['reference_tokens_per_s']:,} unchecked in this run: cost {c['cost_percent']:.2f} % "
              f"(target <= {HASH_TARGET:g} %); hashing every train shard once: {c['hash_ms']:.1f} ms = "
              f"{c['hash_share_percent']:.2f} % of the unchecked delivery time")
    index_peak = index_peak_bytes(args.index_blocks)
    print(f"block order over {args.index_blocks:,} blocks: peak {index_peak / 2**10:,.1f} KiB traced memory "
          f"(a materialised permutation: {8 * args.index_blocks / 2**30:,.2f} GiB per epoch)")
    if args.json:
        print(json.dumps({"rows": rows, "hash_cost": costs, "index_blocks": args.index_blocks,
                          "index_peak_bytes": index_peak}))


if __name__ == "__main__":
    main()
