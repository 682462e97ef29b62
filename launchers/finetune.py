"""`python launchers/finetune.py` (also under torchrun, deepspeed and the SLURM job scripts): a thin wrapper.

The command, with its usage, is dsl_scale/cli/finetune.py;
the `dsl-finetune` console script runs the same main().
"""

from dsl_scale.cli.finetune import main

if __name__ == "__main__":
    main()
