"""`python tools/estimate_memory.py ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/estimate_memory.py;
the `dsl-estimate-memory` console script runs the same main().
"""

import sys

from dsl_scale.cli.estimate_memory import main

if __name__ == "__main__":
    sys.exit(main())
