"""`python launchers/evaluate.py` (also under torchrun, deepspeed and the SLURM job scripts): a thin wrapper.

The command, with its usage, is dsl_scale/cli/evaluate.py;
the `dsl-evaluate` console script runs the same main().
"""

from dsl_scale.cli.evaluate import main

if __name__ == "__main__":
    main()
