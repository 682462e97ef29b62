"""The floor plan (docs/internals.md, "Layout"): a package imports only from packages below it, lazily or not."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dsl_scale"
# Bottom to top. `launch` and `cli` are the entry points; `experiment` drives whole runs through them.
LAYERS = ["core", "config", "tokenizer", "data", "diffusion", "model", "parallel", "checkpoint", "sampling",
          "evaluation", "train", "experiment", "launch", "cli"]


def imported_packages(file: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsl_scale"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "dsl_scale" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("dsl_scale")]
        found.update(name.split(".")[1] for name in names if "." in name)
    return found


def test_no_package_imports_from_a_layer_above_it():
    upward = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE).parts
        own = parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        assert own in LAYERS, f"{file}: package {own!r} is missing from the floor plan (LAYERS)"
        for other in imported_packages(file):
            if LAYERS.index(other) > LAYERS.index(own):
                upward.append(f"{file.relative_to(PACKAGE.parent)} imports dsl_scale.{other}")
    assert not upward, "\n".join(upward)


def test_train_is_imported_only_from_entry_points_and_the_experiment():
    allowed = {"train", "experiment", "launch", "cli"}
    users = {file.relative_to(PACKAGE).parts[0].removesuffix(".py")
             for file in PACKAGE.rglob("*.py") if "train" in imported_packages(file)}
    assert users <= allowed, users - allowed


def test_the_model_touches_no_process_group_or_deepspeed():
    """The model knows parallelism only through megatron-core's layer types: no torch.distributed, no
    DeepSpeed (collectives outside those layers belong to parallel/, checkpoint/ and train/)."""
    offenders = []
    for file in sorted((PACKAGE / "model").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{file.name} imports {m}" for m in modules
                          if m.startswith(("torch.distributed", "deepspeed"))]
    assert not offenders, offenders
