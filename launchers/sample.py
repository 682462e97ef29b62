"""`python launchers/sample.py` (also under torchrun, deepspeed and the SLURM job scripts): a thin wrapper.

The command, with its usage, is dsl_scale/cli/sample.py;
the `dsl-sample` console script runs the same main().
"""

from dsl_scale.cli.sample import main

if __name__ == "__main__":
    main()
