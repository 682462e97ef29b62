"""Print the paper's claims with the verdicts PREREGISTRATION.md's rules give across the testbeds, as a markdown
table, from the runs' results.json files (dsl_scale/experiment/claims.py):

    python tools/claims_table.py --synthetic docs/results/prereg/synthetic/results.json \
        --synthetic-base2000 docs/results/prereg/synthetic_base2000/results.json \
        --text docs/results/prereg/text/results.json

A testbed left out (or whose file does not exist) gives "no verdict (... not run)" wherever a rule reads it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsl_scale.experiment.claims import claims_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for testbed in ("synthetic", "synthetic-base2000", "text"):
        parser.add_argument(f"--{testbed}", type=Path, help=f"the {testbed} run's results.json")
    args = parser.parse_args()
    results = {}
    for testbed in ("synthetic", "synthetic_base2000", "text"):
        path = getattr(args, testbed)
        results[testbed] = json.loads(path.read_text()) if path is not None and path.is_file() else None
    print("\n".join(claims_markdown(results)))


if __name__ == "__main__":
    main()
