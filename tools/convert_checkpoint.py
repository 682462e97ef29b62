"""`python tools/convert_checkpoint.py ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/convert_checkpoint.py;
the `dsl-convert-checkpoint` console script runs the same main().
"""

import sys

from dsl_scale.cli.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
