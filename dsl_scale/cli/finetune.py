"""Fine-tune a trained checkpoint, by default with the DSL objective (SPEC §4).

    python launchers/finetune.py init_from=RUN_DIR_OR_WEIGHTS [hydra overrides]   (also under deepspeed/torchrun;
    or `dsl-finetune init_from=... [overrides]`)

The same trainer as pretrain.py: weights come from `init_from` (any of our checkpoints saved with ZeRO ≤ 2,
or a consolidated model.safetensors), parameters the source lacks (DSL's converter) are initialised from
it, and the optimizer starts fresh. Re-running resumes from the run's own `latest`.
"""

from __future__ import annotations

from dsl_scale.launch import hydra_main


def run(cfg) -> None:
    from dsl_scale.train.trainer import Trainer

    if not cfg.init_from:
        raise ValueError("finetune needs init_from=<a run directory, checkpoint or model.safetensors>")
    from dsl_scale.parallel.topology import shutdown_process_groups

    Trainer(cfg).fit()
    shutdown_process_groups()


def main() -> None:
    from dsl_scale.config import register_configs

    hydra_main(run, config_name="finetune", register=register_configs)
