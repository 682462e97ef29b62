"""What every Hydra entry point (dsl_scale/cli/, run by launchers/*.py) shares: argv clean-up, environment, config."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def strip_launcher_args(argv: list[str]) -> list[str]:
    """`deepspeed` appends --local_rank=N to the script's arguments; Hydra would reject it."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            os.environ.setdefault("LOCAL_RANK", arg)
            skip = False
        elif arg.startswith("--local_rank") or arg.startswith("--local-rank"):
            if "=" in arg:
                os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
            else:
                skip = True
        else:
            kept.append(arg)
    return kept


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """SLURM's compressed per-node task counts ("2(x3),1") → the count of node `node_id`."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        count, _, repeat = part.partition("(x")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts[node_id]


def slurm_environment(environ: dict | None = None) -> None:
    """One process per rank started by `srun` itself (e.g. `deepspeed --launcher slurm`, or `srun python ...`):
    torch.distributed's RANK/WORLD_SIZE/LOCAL_RANK come from the task's SLURM_* variables. Under torchrun or
    deepspeed's own launcher RANK is already set and nothing changes; MASTER_ADDR/PORT come from the job
    script (launchers/slurm/*.sbatch export them)."""
    env = os.environ if environ is None else environ
    if "RANK" in env or int(env.get("SLURM_STEP_NUM_TASKS", "1")) == 1:
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise RuntimeError(f"started by srun with {env['SLURM_STEP_NUM_TASKS']} tasks but {missing} not set: "
                           "export the head node's address and a port (launchers/slurm/*.sbatch do)")
    env.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_STEP_NUM_TASKS"], LOCAL_RANK=env["SLURM_LOCALID"],
               LOCAL_WORLD_SIZE=str(tasks_on_node(env["SLURM_STEP_TASKS_PER_NODE"], int(env["SLURM_NODEID"]))))


def check_ranks_per_node(environ: dict | None = None, visible_gpus: int | None = None) -> None:
    """Before any work: every node runs the same number of ranks (LOCAL_WORLD_SIZE divides WORLD_SIZE), and
    on GPUs each of them has its own (LOCAL_WORLD_SIZE <= the visible GPUs; None: asks torch). Raises
    RuntimeError naming the numbers."""
    env = os.environ if environ is None else environ
    if "LOCAL_WORLD_SIZE" not in env or "WORLD_SIZE" not in env:
        return
    world, local = int(env["WORLD_SIZE"]), int(env["LOCAL_WORLD_SIZE"])
    if world % local:
        raise RuntimeError(f"{local} ranks on this node (LOCAL_WORLD_SIZE) do not divide the world size {world}: "
                           "start the same number of ranks (GPUs) on every node")
    if visible_gpus is None:
        import torch

        visible_gpus = torch.cuda.device_count()
    if 0 < visible_gpus < local:
        raise RuntimeError(f"{local} ranks on this node but {visible_gpus} visible GPU(s): ranks would share a "
                           "GPU; start one rank per GPU (--nproc-per-node, --gpus-per-node)")


def hydra_main(run: Callable, config_name: str, register: Callable[[], None], check: Callable | None = None,
               groups: tuple[str, ...] = (), doc: str = "", schema: type | None = None) -> None:
    """Run `run(typed_config)` under Hydra; `register` puts the entry point's schema in the ConfigStore, `check`
    validates the typed config (raises ValueError), `groups` and `doc` make the command's --help.

    The config is composed and checked before torch, DeepSpeed or megatron-core are imported, so a bad key or
    value fails within seconds, as one line on stderr (exit 2; HYDRA_FULL_ERROR=1 gives the traceback);
    `--check` stops there ("config OK"), `--cfg job` prints only a valid config."""
    if not os.path.isdir(CONFIG_DIR):  # a non-editable install: the configs stay in the checkout
        raise SystemExit(f"dsl_scale's Hydra configs are not at {CONFIG_DIR}: the package runs from a checkout "
                         "(tools/setup.sh, or `pip install -e .` in it), not from a copied wheel")
    sys.argv = strip_launcher_args(sys.argv)
    name = command_name(config_name)
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        print(command_help(name, doc, groups, schema))
        return
    slurm_environment()  # WORLD_SIZE under srun, for the config's checks
    register()
    only_check = "--check" in args
    if only_check:
        sys.argv = [a for a in sys.argv if a != "--check"]
    typed = checked_config(name, config_name, hydra_overrides(sys.argv[1:]), check)
    if only_check:
        print(f"{name}: config OK", file=sys.stderr)
        return
    check_ranks_per_node()  # may ask torch for the visible GPUs: after the config's checks

    import hydra

    from dsl_scale.config import to_config
    from dsl_scale.parallel.topology import prepare_environment

    del typed  # composed again by hydra.main below, with its run directory and job settings
    prepare_environment()

    @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")
    def _main(cfg) -> None:
        from dsl_scale.checkpoint.source import CheckpointError

        try:
            run(to_config(cfg))
        except CheckpointError as err:  # a checkpoint that is not what the command needs: one line too
            _fail(name, err)

    _main()


def command_name(config_name: str) -> str:
    script = Path(sys.argv[0]).name
    return script if script.startswith("dsl-") else "dsl-" + {"config": "pretrain"}.get(config_name, config_name)


def command_help(name: str, doc: str, groups: tuple[str, ...], schema: type | None = None) -> str:
    """The command's own --help: its docstring, its config groups and their options, its keys with their
    defaults and descriptions (the schema's comments)."""
    lines = [f"{name}: {doc.strip()}" if doc else name, "", "Config groups (GROUP=OPTION):"]
    for group in groups:
        options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        lines.append(f"  {group:10s} {', '.join(options)}")
    if schema is not None:
        lines += ["", "Keys (KEY=VALUE; the defaults before any group or preset):", *key_help(schema)]
    lines += ["", "The composed config: `--cfg job` (validated first); `--check` validates only. Hydra's own "
              "options: --hydra-help."]
    return "\n".join(lines)


def key_help(schema: type, prefix: str = "") -> list[str]:
    """`  key = default  # description` for every field of a config dataclass (and of those inside it)."""
    import dataclasses

    comments: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        comments.update(_field_comments(cls))
    lines = []
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "???"
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            lines += key_help(type(default), f"{prefix}{f.name}.")
            continue
        choices = f.metadata.get("choices")
        if choices and f.name == "name" and len(choices) == 1:  # a variant's own name: its group lists the others
            choices = None
        described = comments.get(f.name, "").rstrip(".")
        note = "; ".join(x for x in (described, f"one of {', '.join(choices)}" if choices else "") if x)
        lines.append(f"  {prefix}{f.name} = {default!r}" + (f"  # {note}" if note else ""))
    return lines


def _field_comments(cls: type) -> dict[str, str]:
    """A dataclass's field comments: the comment lines just above a field and the one at its end."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    for line in source[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = re.match(r"^\s+(\w+)\s*:", line)
        if match and not stripped.startswith(("def ", "@")):
            inline = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            text = " ".join([*above, inline]).strip()
            if text:
                out[match.group(1)] = text
        above = []
    return out


def hydra_overrides(args: list[str]) -> list[str]:
    """The key=value overrides among Hydra's command-line arguments (its own flags, e.g. --cfg job, left out)."""
    from hydra._internal.utils import get_args_parser

    parsed, _ = get_args_parser().parse_known_args(args)
    return list(parsed.overrides)


def checked_config(name: str, config_name: str, overrides: list[str], check: Callable | None):
    """The typed config these overrides compose to, checked; a bad key or value exits 2 with one line."""
    from hydra import compose, initialize_config_dir

    from dsl_scale.config import to_config

    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            composed = compose(config_name, overrides=[o for o in overrides if not o.startswith("hydra.")])
        typed = to_config(composed)
        if check is not None:
            check(typed)
        return typed
    except Exception as err:  # Hydra's, OmegaConf's and our checks: a message naming the key
        _fail(name, err)


def _fail(name: str, err: BaseException) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"{name}: error: {one_line(err)}", file=sys.stderr)
    raise SystemExit(2)


def one_line(err: BaseException) -> str:
    """An exception (and its cause, e.g. OmegaConf's behind Hydra's) as one line."""
    parts = []
    while err is not None and len(parts) < 3:
        first = " ".join(str(err).split("\n")[0].split()).rstrip(".") or type(err).__name__
        if first not in parts:
            parts.append(first)
        err = err.__cause__
    return ": ".join(parts)
