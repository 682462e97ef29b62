"""Run the trainer's start-up data check (`batches.check_data`) on each `--data` directory in each rank of a
real gloo job and record what the rank concluded and which shard files it examined (run by test_data_checks.py)."""

from __future__ import annotations

import argparse
import json
import os

import torch.distributed as dist

from dsl_scale.config import DataConfig
from dsl_scale.data import checks
from dsl_scale.data.batches import check_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    check_size = checks._check_size
    examined: list[str] = []

    def recording(shard_file: str, expected: int, listed_in: str) -> None:  # the real check, noted down
        examined.append(shard_file)
        check_size(shard_file, expected, listed_in)

    checks._check_size = recording
    reports = []
    for data in args.data:
        examined.clear()
        error = None
        try:
            check_data(DataConfig(path=data, source=""), 32, 50258, "mds")
        except (OSError, ValueError) as err:
            error = [type(err).__name__, str(err)]
        reports.append({"examined": list(examined), "error": error})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w", encoding="utf-8") as f:
        json.dump(reports, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
