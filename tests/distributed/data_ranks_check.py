"""Dump the training batches this rank receives, one JSON line per step (run by test_data_ranks.py).

Builds the real TP x DP process groups and the trainer's data path (`open_splits` + `train_batches`),
so what is written is exactly what `Trainer.train_step` would get. `--kill-at K` SIGKILLs the rank
when it reaches step K, like a crashed node.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import torch.distributed

from dsl_scale.config import DataConfig
from dsl_scale.data.batches import open_splits, train_batches
from dsl_scale.parallel.topology import init_process_groups


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--formats", default="mds")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--steps", default="0:10", help="first:last (last excluded)")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--kill-at", type=int, default=-1)
    args = parser.parse_args()
    if "RANK" in os.environ:  # plain gloo: DeepSpeed's start-up (its shm op) is not needed to read data
        torch.distributed.init_process_group("gloo")
    topo = init_process_groups(args.tp, 1)
    first, last = map(int, args.steps.split(":"))
    os.makedirs(args.out, exist_ok=True)
    for fmt in args.formats.split(","):
        data = DataConfig(path=args.data, source="", format=fmt, workers=args.workers, streams=args.streams)
        train, _ = open_splits(data, args.seq_len, 50258, val_blocks=4)
        batches = train_batches(train, data, args.global_batch, topo.dp_rank, topo.dp, seed=11)
        with open(os.path.join(args.out, f"{fmt}-rank{topo.rank}.jsonl"), "a", encoding="utf-8") as f:
            for step in range(first, last):
                if step == args.kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                record = {"step": step, "rank": topo.rank, "dp": topo.dp, "dp_rank": topo.dp_rank,
                          "tp_rank": topo.tp_rank, "tokens": batches.batch_at(step).tolist()}
                f.write(json.dumps(record) + "\n")
                f.flush()


if __name__ == "__main__":
    main()
