"""What every Hydra entry point in launchers/ shares: argv clean-up, environment, config conversion."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def strip_launcher_args(argv: list[str]) -> list[str]:
    """`deepspeed` appends --local_rank=N to the script's arguments; Hydra would reject it."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            os.environ.setdefault("LOCAL_RANK", arg)
            skip = False
        elif arg.startswith("--local_rank") or arg.startswith("--local-rank"):
            if "=" in arg:
                os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
            else:
                skip = True
        else:
            kept.append(arg)
    return kept


def hydra_main(run: Callable, config_name: str, register: Callable[[], None]) -> None:
    """Run `run(typed_config)` under Hydra; `register` puts the entry point's schema in the ConfigStore."""
    from dsl_scale.parallel.topology import prepare_environment

    sys.argv = strip_launcher_args(sys.argv)
    prepare_environment()

    import hydra

    from dsl_scale.config import to_config

    register()

    @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")
    def _main(cfg) -> None:
        run(to_config(cfg))

    _main()
