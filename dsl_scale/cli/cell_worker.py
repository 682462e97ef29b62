"""A long-lived process that runs the reproduction's sample and evaluate commands one after another
(`in_process: true` in an experiment config): torch, DeepSpeed and megatron-core are imported once instead of once
per cell, which on 2 CPU cores is most of a small cell's time.

Protocol: one JSON object per line on stdin, {"script": "sample.py", "args": [...], "log": PATH}; the command's
output goes to PATH and the worker answers on stdout with one line `REPLY {"rc": N}`. The command runs as its
launcher would (the same config composition and checks, then the same run function); a failure is its exit code
and traceback in the log, and the worker goes on with the next command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable

from dsl_scale.experiment.stages import REPLY


def entry_point(script: str) -> tuple[str, Callable[[], None], Callable | None, Callable]:
    """(config name, register, check, run) of a launcher script that the worker can run."""
    if script == "sample.py":
        from dsl_scale.cli import sample
        from dsl_scale.sampling.config import register_sample_configs

        return "sample", register_sample_configs, sample.check, sample.run
    if script == "evaluate.py":
        from dsl_scale.cli import evaluate
        from dsl_scale.evaluation.config import register_eval_configs, validate_eval_config

        return "evaluate", register_eval_configs, validate_eval_config, evaluate.run
    raise ValueError(f"the cell worker runs sample.py and evaluate.py, not {script}")


def run_job(script: str, args: list[str]) -> int:
    from dsl_scale.launch import checked_config, hydra_overrides

    try:
        config_name, register, check, run = entry_point(script)
        register()
        run(checked_config(f"dsl-{config_name}", config_name, hydra_overrides(args), check))
        return 0
    except SystemExit as stop:  # a config error: the launcher's one line is already in the log
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - any failure is the command's, reported in its log
        traceback.print_exc()
        return 1


def main() -> None:
    from dsl_scale.parallel.topology import prepare_environment

    prepare_environment()
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    for line in sys.stdin:
        job = json.loads(line)
        with open(job["log"], "a", encoding="utf-8", buffering=1) as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = run_job(job["script"], job["args"])
        reply.write(REPLY + json.dumps({"rc": code}) + "\n")


if __name__ == "__main__":
    main()
