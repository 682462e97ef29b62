"""Fine-tune a trained checkpoint, by default with the DSL objective (SPEC §4).

    python launchers/finetune.py init_from=RUN_DIR_OR_WEIGHTS [hydra overrides]   (also under deepspeed/torchrun)

The same trainer as pretrain.py: weights come from `init_from` (any of our checkpoints saved with ZeRO ≤ 2,
or a consolidated model.safetensors), parameters the source lacks (DSL's converter) are initialised from
it, and the optimizer starts fresh. Re-running resumes from the run's own `latest`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsl_scale.launch import hydra_main  # noqa: E402


def run(cfg) -> None:
    from dsl_scale.train.trainer import Trainer

    if not cfg.init_from:
        raise ValueError("finetune needs init_from=<a run directory, checkpoint or model.safetensors>")
    Trainer(cfg).fit()


if __name__ == "__main__":
    from dsl_scale.config import register_configs

    hydra_main(run, config_name="finetune", register=register_configs)
