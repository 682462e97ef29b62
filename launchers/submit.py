"""`python launchers/submit.py JOB ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/submit.py;
the `dsl-submit` console script runs the same main().
"""

import sys

from dsl_scale.cli.submit import main

if __name__ == "__main__":
    sys.exit(main())
