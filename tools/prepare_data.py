"""`python tools/prepare_data.py ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/prepare_data.py;
the `dsl-prepare-data` console script runs the same main().
"""

import sys

from dsl_scale.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
