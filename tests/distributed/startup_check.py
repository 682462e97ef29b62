"""Start a micro Trainer on every rank and record what it resumed (run by test_startup.py).

Rank r > 0 reads its checkpoints through `RUN_DIR-rank<r>` when that directory exists: a test gives it a view
of the same tags whose `latest` is older, like a stale network-filesystem cache on another node.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from dsl_scale.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def micro_config(data: str, run_dir: str, steps: int = 4) -> Config:
    return Config(model=ModelConfig(name="micro", hidden=32, n_blocks=2, n_heads=2, cond_dim=16, seq_len=64,
                                    dropout=0.0),
                  data=DataConfig(path=data, source=""), optim=OptimConfig(lr=1e-3, warmup_steps=2),
                  train=TrainConfig(steps=steps, global_batch=4, micro_batch=2, ema=0.0, eval_examples=4,
                                    eval_every=100, save_every=100, log_every=1),
                  run_dir=run_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from dsl_scale.parallel.topology import shutdown_process_groups
    from dsl_scale.train.trainer import Trainer

    rank = int(os.environ.get("RANK", "0"))
    view = Path(f"{args.run_dir}-rank{rank}")
    cfg = micro_config(args.data, str(view) if rank > 0 and view.is_dir() else args.run_dir, args.steps)
    trainer = Trainer(cfg)
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for p in trainer.engine.module.parameters())
    record = {"rank": rank, "step": trainer.step, "tag": trainer.checkpointer.decision.tag, "checksum": checksum}
    trainer.fit()
    record["final_step"] = trainer.step
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(record))
    shutdown_process_groups()


if __name__ == "__main__":
    main()
