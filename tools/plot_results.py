"""`python tools/plot_results.py ...`: a thin wrapper.

The command, with its usage, is dsl_scale/cli/plot_results.py;
the `dsl-plot-results` console script runs the same main().
"""

import sys

from dsl_scale.cli.plot_results import main

if __name__ == "__main__":
    sys.exit(main())
