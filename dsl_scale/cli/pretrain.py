"""Pretrain a DiT with a diffusion objective.

    deepspeed --num_gpus N launchers/pretrain.py [hydra overrides]   (DS_ACCELERATOR=cpu is set on CPU)
    torchrun --nproc_per_node N launchers/pretrain.py [overrides]
    python launchers/pretrain.py [overrides]                          (world of one; or `dsl-pretrain [overrides]`)
"""

from __future__ import annotations

from dsl_scale.launch import hydra_main


def run(cfg) -> None:
    from dsl_scale.parallel.topology import shutdown_process_groups
    from dsl_scale.train.trainer import Trainer

    Trainer(cfg).fit()
    shutdown_process_groups()


def check(cfg) -> None:
    """The config's own checks at the launcher's world size (before torch is imported)."""
    import os

    from dsl_scale.config import validate
    from dsl_scale.data.sources import check_data_given

    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    check_data_given(cfg.data)


GROUPS = ("model", "objective", "preset")


def main() -> None:
    from dsl_scale.config import Config, register_configs

    hydra_main(run, config_name="config", register=register_configs, check=check, groups=GROUPS,
               doc=__doc__.splitlines()[0], schema=Config)
