"""`python tools/reproduce.py ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/reproduce.py;
the `dsl-reproduce` console script runs the same main().
"""

import sys

from dsl_scale.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
