"""`python launchers/pretrain.py` (also under torchrun, deepspeed and the SLURM job scripts): a thin wrapper.

The command, with its usage, is dsl_scale/cli/pretrain.py;
the `dsl-pretrain` console script runs the same main().
"""

from dsl_scale.cli.pretrain import main

if __name__ == "__main__":
    main()
