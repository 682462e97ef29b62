"""Command-line entry points: the console scripts in pyproject.toml (`dsl-pretrain`, `dsl-sample`, ...) and the
thin `launchers/*.py` / `tools/*.py` wrappers that `python`, `torchrun`, `deepspeed` and the SLURM job scripts
start. Each module's `main()` is the whole command; nothing in the package imports from here."""
