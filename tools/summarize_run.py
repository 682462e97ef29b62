"""`python tools/summarize_run.py ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/summarize_run.py;
the `dsl-summarize-run` console script runs the same main().
"""

import sys

from dsl_scale.cli.summarize_run import main

if __name__ == "__main__":
    sys.exit(main())
