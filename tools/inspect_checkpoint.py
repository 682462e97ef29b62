"""`python tools/inspect_checkpoint.py ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/inspect_checkpoint.py;
the `dsl-inspect-checkpoint` console script runs the same main().
"""

import sys

from dsl_scale.cli.inspect_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
