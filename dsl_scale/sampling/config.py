"""Schema of launchers/sample.py (configs/sample.yaml), registered with Hydra's ConfigStore."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class SampleConfig:
    checkpoint: str = "runs/default"
    weights: str = "auto"  # ema | model | auto (EMA when the checkpoint has it)
    sampler: str = "mdlm"
    steps: int = 64
    num_samples: int = 4
    batch_size: int = 4
    top_p: float = 0.9
    seed: int = 0
    out: str = "samples.jsonl"
    print_samples: int = 0  # echo this many decoded samples to stdout


def register_sample_configs() -> None:
    ConfigStore.instance().store(name="sample_schema", node=SampleConfig)
