"""Run with plain python and a run's Hydra overrides: builds the run's Trainer (which resumes from `latest`) and
prints one JSON line saying where, in which dtype and with which sums the resumed EMA and AdamW state live, for
tests/distributed/test_gpu_path_state.py to compare with the checkpoint files."""

from __future__ import annotations

import json

import torch

from dsl_scale.config import register_configs
from dsl_scale.core.device import compute_device
from dsl_scale.launch import hydra_main


def describe(tensor: torch.Tensor) -> dict:
    return {"dtype": str(tensor.dtype), "device": str(tensor.device), "abs_sum": float(tensor.double().abs().sum())}


def report(cfg) -> None:
    from dsl_scale.train.trainer import Trainer

    trainer = Trainer(cfg)
    engine = trainer.engine
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch AdamW inside DeepSpeed's wrapper
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    moments = [{"key": key, "updated": id(param) in updated, "param_device": str(param.device), **describe(value)}
               for param, state in optimizer.state.items() for key, value in state.items()
               if key in ("exp_avg", "exp_avg_sq")]
    print("STATE " + json.dumps({
        "step": trainer.step,
        "compute_device": str(compute_device()),
        "param_dtypes": sorted({str(p.dtype) for p in engine.module.parameters()}),
        "moments": moments,
        "adam_steps": sorted({float(state["step"]) for state in optimizer.state.values() if "step" in state}),
        "ema": {name: describe(value) for name, value in trainer.ema.state_dict().items()},
    }), flush=True)


if __name__ == "__main__":
    hydra_main(report, config_name="config", register=register_configs)
