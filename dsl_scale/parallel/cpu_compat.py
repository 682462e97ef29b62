"""The one place where megatron-core's CUDA assumptions are bridged for CPU runs (gloo).

Megatron-core 0.16 allocates pipeline buffers with `torch.cuda.current_device()` / `device="cuda"`,
calls `torch.cuda.synchronize()` around p2p transfers, and keeps its dropout RNG streams in a CUDA
RNG tracker. `install()` does nothing when a GPU is present. Without one it gives the affected
megatron modules a `torch` whose CUDA entry points mean "the CPU" (module-local: the real `torch` module
is untouched) and replaces the RNG tracker by one that keeps CPU generator states. It is the registered
framework patch "megatron-cpu-bridge" (dsl_scale/core/patches.py: version-checked, undone by `undo`).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

from dsl_scale.core import patches
from dsl_scale.core.seeding import derive_seed

# Modules that reach CUDA through their module-level `torch` name.
PATCHED_MODULES = (
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.transformer.utils",
    "megatron.core.utils",  # the global memory buffer of sequence-parallel all-gathers
    "megatron.core.tensor_parallel.mappings",  # sequence-parallel gather / reduce-scatter outputs
    "megatron.core.tensor_parallel.layers",  # the sequence-parallel all-gather in backward
)
MODEL_PARALLEL_RNG = "model-parallel-rng"
DATA_PARALLEL_RNG = "data-parallel-rng"

PATCH = "megatron-cpu-bridge"


def _cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int) or str(device).startswith("cuda"):
        return torch.device("cpu")
    return device


class _CpuCuda:
    """`torch.cuda` as seen by the patched modules: the current device is the CPU."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(*_args, **_kwargs) -> None:
        return None

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _CpuTorch(types.ModuleType):
    """A stand-in for the `torch` module inside megatron modules that hard-code CUDA allocations."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CpuCuda()
        for factory in ("zeros", "empty", "ones", "tensor", "full", "arange"):
            setattr(self, factory, self._on_cpu(getattr(torch, factory)))

    @staticmethod
    def _on_cpu(fn):
        def wrapper(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            return fn(*args, **kwargs)

        wrapper.__name__ = fn.__name__
        return wrapper

    def __getattr__(self, name):
        return getattr(torch, name)


class CpuRNGStatesTracker:
    """megatron's RNG tracker interface over CPU generator states: named streams entered with `fork()`."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._initialized = False

    def is_initialized(self) -> bool:
        return self._initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already in use by the RNG tracker")
        if name in self.states_:
            raise ValueError(f"RNG stream {name!r} already exists")
        self._initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG) -> Iterator[None]:
        if name not in self.states_:
            raise KeyError(f"RNG stream {name!r} was never added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def install() -> bool:
    """Bridge megatron-core's CUDA assumptions when there is no GPU. Returns whether anything was patched."""
    if torch.cuda.is_available():
        return False
    patches.apply(PATCH)
    return True


@patches.implements(PATCH)
def _bridge_to_cpu():
    import importlib

    from megatron.core.tensor_parallel import random as megatron_random

    modules = [importlib.import_module(name) for name in PATCHED_MODULES]
    original_torch = [module.torch for module in modules]
    original_tracker = (megatron_random._CUDA_RNG_STATE_TRACKER, megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED)
    cpu_torch = _CpuTorch()
    for module in modules:
        module.torch = cpu_torch
    megatron_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    def undo() -> None:
        for module, original in zip(modules, original_torch):
            module.torch = original
        megatron_random._CUDA_RNG_STATE_TRACKER, megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = original_tracker

    return undo


def seed_parallel_rng(seed: int, tp_rank: int) -> None:
    """Megatron's streams, derived from the seed: one shared by the TP group (for dropout on replicated
    activations) and one per TP rank (for dropout inside TP regions), on CPU or GPU alike."""
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add(DATA_PARALLEL_RNG, derive_seed(seed, 0xD9))
    tracker.add(MODEL_PARALLEL_RNG, derive_seed(seed, 0x7E, tp_rank))
