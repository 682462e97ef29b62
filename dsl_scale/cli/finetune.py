"""Fine-tune a trained checkpoint, by default with the DSL objective (docs/method.md §4).

    python launchers/finetune.py init_from=CHECKPOINT [hydra overrides]   (also under deepspeed/torchrun;
    or `dsl-finetune init_from=... [overrides]`)

The same trainer as pretrain.py: weights come from `init_from` (anything checkpoint/source.py opens: one of our
runs at any layout, a consolidated directory, a Hugging Face MDLM directory or Hub id such as
kuleshov-group/mdlm-owt, a Lightning .ckpt), and so does the model's shape (model=from_checkpoint, the default
here); parameters the source lacks (DSL's converter) are initialised from it, and the optimizer starts fresh.
Re-running resumes from the run's own `latest`. The recipe behind the published results:
preset=dsl_from_mdlm_owt_1node (or _4node).
"""

from __future__ import annotations

from dsl_scale.launch import hydra_main


def run(cfg) -> None:
    from dsl_scale.parallel.topology import shutdown_process_groups
    from dsl_scale.train.trainer import Trainer

    Trainer(cfg).fit()
    shutdown_process_groups()


def check(cfg) -> None:
    from dsl_scale.cli.pretrain import check as check_training

    if not cfg.init_from:
        raise ValueError("init_from is not set: finetune needs init_from=<a run, checkpoint, Hugging Face MDLM "
                         "directory or Hub id>")
    check_training(cfg)


def main() -> None:
    from dsl_scale.cli.pretrain import GROUPS
    from dsl_scale.config import Config, register_configs

    hydra_main(run, config_name="finetune", register=register_configs, check=check, groups=GROUPS,
               doc=__doc__.splitlines()[0], schema=Config)
