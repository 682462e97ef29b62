"""The one registry of framework patches: every change dsl_scale makes to megatron-core, DeepSpeed or
mosaicml-streaming, and every place that writes into their internals, is declared here with the package
versions it was written against.

Two kinds of entries:
- a *patch* swaps something in a framework (a module attribute, a function, a `sys.modules` entry). Its
  code lives beside its subject, registered with `@implements(name)`, and returns a function that undoes
  it. `apply(name)` checks the installed version, applies once (idempotent) and records the undo;
  `undo(name)` / `undo_all()` put the originals back (tests undo everything after each test).
- a *requirement* touches a framework's internals without swapping anything (e.g. writing AdamW moments
  into ZeRO's flat partitions); the code calls `require(name)` before it does.

On a version outside an entry's tested range `apply` / `require` raise `UntestedVersionError`; with
DSL_SCALE_UNTESTED_PATCHES=1 in the environment they warn (`UntestedVersionWarning`) and go ahead.

Ground floor: nothing here imports from dsl_scale (the `home` of an entry is only a name, for messages).
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

OVERRIDE_ENV = "DSL_SCALE_UNTESTED_PATCHES"

PATCH = "patch"
REQUIREMENT = "requirement"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # PATCH or REQUIREMENT
    distribution: str  # the package as pip names it
    tested: str  # the versions it was written against, e.g. ">=0.16,<0.17"
    home: str  # the dsl_scale module that implements (patch) or relies on (requirement) it
    what: str


REGISTRY: dict[str, Entry] = {e.name: e for e in (
    Entry("megatron-cpu-bridge", PATCH, "megatron-core", ">=0.16,<0.17", "dsl_scale.parallel.cpu_compat",
          "without a GPU: the module-level `torch` of megatron's pipeline, p2p, utils and tensor-parallel "
          "modules becomes a CPU stand-in, and megatron's CUDA RNG tracker one over CPU generator states"),
    Entry("deepspeed-zero3-trace-check-within-stage", PATCH, "deepspeed", ">=0.19,<0.20",
          "dsl_scale.parallel.pipeline",
          "partitioned_param_coordinator.assert_ints_same_as_other_ranks checks over the data-parallel "
          "group (the replicas of one pipeline stage) instead of broadcasting over the whole world"),
    Entry("deepspeed-zero1-bf16-fp32-accumulation", PATCH, "deepspeed", ">=0.19,<0.20", "dsl_scale.parallel.engine",
          "DeepSpeedEngine._do_optimizer_sanity_check keeps ZeRO-1's DeepSpeedZeroOptimizer (fp32 `grad_accum` "
          "per parameter) for bf16 with data_types.grad_accum_dtype=fp32, where DeepSpeed would pick "
          "BF16_Optimizer (a different optimizer-state layout)"),
    Entry("streaming-vision-placeholder", PATCH, "mosaicml-streaming", ">=0.13,<0.14",
          "dsl_scale.data.streaming_compat",
          "an empty `streaming.vision` in sys.modules when torchvision cannot import, so `import streaming` "
          "works"),
    Entry("deepspeed-zero-optimizer-state", REQUIREMENT, "deepspeed", ">=0.19,<0.20",
          "dsl_scale.checkpoint.reshard",
          "AdamW moments written into ZeRO's optimizer internals (single_partition_of_fp32_groups, "
          "bit16_groups, _hp_mapping fragment addresses, fp32_partitioned_groups_flat, set_full_hp_param)"),
    Entry("deepspeed-zero-init-factories", REQUIREMENT, "deepspeed", ">=0.19,<0.20", "dsl_scale.parallel.zero_init",
          "zero.Init's tensor-factory wrappers suspended while a parameter is initialised "
          "(partition_parameters.top_level_context, shutdown_init_context, restore_init_context), so the draws "
          "are fp32 on the host"),
    Entry("megatron-implicit-tp-group", PATCH, "megatron-core", ">=0.16,<0.17", "dsl_scale.parallel.compile",
          "tensor_parallel.layers.get_tensor_model_parallel_group_if_none passes the default TP group explicitly "
          "(RowParallelLinear hands it None, and the rank-0-only deprecation warning broke graphs on rank 0 only)"),
    Entry("megatron-linear-warning-flag", REQUIREMENT, "megatron-core", ">=0.16,<0.17", "dsl_scale.parallel.compile",
          "tensor_parallel.layers.linear_with_grad_accumulation_and_async_allreduce.warned set before torch.compile "
          "(its first-call warning would break and then recompile the compiled branches)"),
    Entry("torch-privateuse1-python-backend", REQUIREMENT, "torch", ">=2.13,<2.14", "tests.fake_gpu",
          "the tests' fake GPU: torch.utils.backend_registration._setup_privateuseone_for_python_backend (a "
          "private API) registering PrivateUse1 as a Python backend, used under FakeTensorMode"),
    Entry("deepspeed-engine-backward-allreduce", REQUIREMENT, "deepspeed", ">=0.19,<0.20",
          "dsl_scale.parallel.engine",
          "engine.enable_backward_allreduce set to False to skip the no-op gradient all-reduce of one replica"),
    Entry("deepspeed-bf16-fp32-gradients", REQUIREMENT, "deepspeed", ">=0.19,<0.20", "dsl_scale.parallel.fp32_grads",
          "bf16 without ZeRO: each bf16 gradient moved into an fp32 buffer, handed to FP16_UnfusedOptimizer's "
          "fp32 masters (fp16_groups[i][j] ↔ fp32_groups[i][j]) by a step pre-hook on its inner torch optimizer "
          "(`.optimizer`), and engine.enable_backward_allreduce set to False (the buffer is all-reduced instead)"),
    Entry("deepspeed-fp32-master-weights", REQUIREMENT, "deepspeed", ">=0.19,<0.20", "dsl_scale.parallel.masters",
          "the fp32 master weights read for the EMA and the final weights: FP16_UnfusedOptimizer.fp32_groups "
          "(bf16 ZeRO-0); ZeRO-1/2's single_partition_of_fp32_groups, bit16_groups_flat, bit16_groups, "
          "real_dp_process_group (a parameter's offset in its flat group); ZeRO-3's safe_get_local_fp32_param"),
)}


class UntestedVersionError(RuntimeError):
    """A patch or requirement met a package version outside the range it was written against."""


class UntestedVersionWarning(UserWarning):
    """The same, let through by DSL_SCALE_UNTESTED_PATCHES=1."""


_IMPLEMENTATIONS: dict[str, Callable[[], Callable[[], None]]] = {}
_UNDO: dict[str, Callable[[], None]] = {}  # applied patches, in the order they were applied


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_in_range(version: str, tested: str) -> bool:
    """Whether `version` satisfies the PEP 440 range `tested` (local suffixes such as "+cpu" ignored)."""
    try:
        return SpecifierSet(tested).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _override() -> bool:
    return os.environ.get(OVERRIDE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _entry(name: str, kind: str | None = None) -> Entry:
    entry = REGISTRY.get(name)
    if entry is None:
        raise KeyError(f"no framework patch or requirement named {name!r} in dsl_scale/core/patches.py")
    if kind is not None and entry.kind != kind:
        raise ValueError(f"{name!r} is a {entry.kind}, not a {kind}")
    return entry


def check(name: str) -> str | None:
    """Check the installed version against the entry's tested range; returns the installed version.
    Raises `UntestedVersionError` outside the range (a warning with DSL_SCALE_UNTESTED_PATCHES=1)."""
    entry = _entry(name)
    version = installed_version(entry.distribution)
    if version is not None and version_in_range(version, entry.tested):
        return version
    found = f"{entry.distribution} {version} is installed" if version else f"{entry.distribution} is not installed"
    message = (
        f"framework {entry.kind} {entry.name!r} ({entry.home}: {entry.what}) was written against "
        f"{entry.distribution} {entry.tested}, but {found}. Check that it still holds for this version and "
        f"widen its tested range in dsl_scale/core/patches.py, or set {OVERRIDE_ENV}=1 to go ahead untested "
        f"(a warning instead of this error)."
    )
    if _override():
        warnings.warn(message, UntestedVersionWarning, stacklevel=3)
        return version
    raise UntestedVersionError(message)


def implements(name: str) -> Callable:
    """Decorator registering the function that applies patch `name` and returns its undo."""
    _entry(name, PATCH)

    def register(apply_fn: Callable[[], Callable[[], None]]) -> Callable[[], Callable[[], None]]:
        _IMPLEMENTATIONS[name] = apply_fn
        return apply_fn

    return register


def apply(name: str) -> None:
    """Apply patch `name` once (later calls do nothing until it is undone), after the version check."""
    entry = _entry(name, PATCH)
    if name in _UNDO:
        return
    check(name)
    apply_fn = _IMPLEMENTATIONS.get(name)
    if apply_fn is None:
        raise LookupError(f"patch {name!r} has no implementation registered; importing {entry.home} registers it")
    _UNDO[name] = apply_fn()


def require(name: str) -> None:
    """Before code touches a framework's internals: the version check of requirement `name`."""
    _entry(name, REQUIREMENT)
    check(name)


def is_applied(name: str) -> bool:
    return name in _UNDO


def applied() -> list[str]:
    return list(_UNDO)


def undo(name: str) -> bool:
    """Put back what patch `name` replaced; returns whether it was applied."""
    undo_fn = _UNDO.pop(name, None)
    if undo_fn is None:
        return False
    undo_fn()
    return True


def undo_all() -> None:
    """Undo every applied patch, the latest first."""
    for name in reversed(list(_UNDO)):
        undo(name)
