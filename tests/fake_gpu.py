"""A fake GPU for CPU machines: torch's PrivateUse1 device, registered as a Python backend and named `fakegpu`,
under FakeTensorMode. Unlike `meta` (which lets `F.embedding(meta weights, cpu ids)` and matmuls with CPU
tensors run), every operation mixing its tensors with CPU tensors raises at its line, as CUDA does; indexing,
autograd, SDPA, dropout, in-place RNG and torch's fused AdamW work. Nothing is computed: tensors carry shapes,
dtypes and devices only, so a traced step takes about a second.

What it cannot do: read a value on the host (`.item()`, `.tolist()`, `nonzero`, a data-dependent branch) and
make a `torch.Generator` on the device. Real tensors are turned fake before `.to()` / `copy_()` (a
TorchFunctionMode), and FakeTensorMode's constant folding of small tensors is off (CONSTANT_NUMEL_LIMIT = 0).

Use: `with fake_gpu(monkeypatch) as device:` — inside, `compute_device()` is the fake device everywhere in
dsl_scale, and `on_fake_gpu(module, dtype)` moves a module built on the CPU there. Every tensor made inside is
fake and dies with the context."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

from dsl_scale.core import device as device_lib
from dsl_scale.core import patches

NAME = "fakegpu"
REQUIREMENT = "torch-privateuse1-python-backend"  # in dsl_scale/core/patches.py


def register_backend() -> None:
    """Name PrivateUse1 `fakegpu` and register it as a Python backend, once per process (torch allows one
    rename); refuses a process whose PrivateUse1 already has another name."""
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    patches.require(REQUIREMENT)
    current = torch._C._get_privateuse1_backend_name()
    if current == NAME:
        return
    if current != "privateuseone":
        raise RuntimeError(f"PrivateUse1 is already registered as {current!r}: the fake GPU cannot take it")
    _setup_privateuseone_for_python_backend(NAME, backend_module=_BackendModule())


class _BackendModule:
    """What torch asks of a device module (torch.fakegpu) on the training path: autocast's dtypes and the RNG state
    that activation recomputation saves and restores (torch.utils.checkpoint)."""

    def is_initialized(self) -> bool:
        return True

    def is_available(self) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def device_count(self) -> int:
        return 1

    def _is_in_bad_fork(self) -> bool:
        return False

    def manual_seed_all(self, seed: int) -> None:
        pass

    def get_amp_supported_dtype(self) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16]

    def get_rng_state(self, device=None) -> torch.Tensor:
        return torch.zeros(16, dtype=torch.uint8, device="cpu")

    def set_rng_state(self, state: torch.Tensor, device=None) -> None:
        pass


def fake_device() -> torch.device:
    """The fake GPU, `fakegpu:0` (the backend registered first)."""
    register_backend()
    return torch.device(NAME, 0)


def _is_fake_device(device) -> bool:
    return device is not None and torch.device(device).type == NAME


class _FakeInputs(TorchFunctionMode):
    """Real tensors handed to `.to()` / `copy_()` become fake first (FakeTensorMode refuses real inputs), and
    `torch.tensor(data, device=fakegpu)` is built on the host, then moved."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def _fake(self, value):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            return self.mode.from_tensor(value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cuda):
            args = tuple(self._fake(a) for a in args)
        elif func in (torch.tensor, torch.as_tensor) and _is_fake_device(kwargs.get("device")):
            device = kwargs.pop("device")
            return self._fake(func(*args, **kwargs)).to(device)
        return func(*args, **kwargs)


def _point_compute_device_at(monkeypatch, device: torch.device) -> None:
    """compute_device() → `device` in core/device.py and in every dsl_scale module that imported it by name."""
    original = device_lib.compute_device
    for name, module in list(sys.modules.items()):
        if name.startswith("dsl_scale") and getattr(module, "compute_device", None) is original:
            monkeypatch.setattr(module, "compute_device", lambda: device)


@contextlib.contextmanager
def fake_gpu(monkeypatch) -> Iterator[torch.device]:
    """The fake device, with compute_device() pointing at it (see the module docstring)."""
    import torch._subclasses.fake_tensor as fake_tensor

    device = fake_device()
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 0)
    _point_compute_device_at(monkeypatch, device)
    mode = fake_tensor.FakeTensorMode(allow_non_fake_inputs=False)
    # backward on the calling thread: the autograd engine sizes its per-device threads at the process's first
    # backward, which may have run before the fake device existed
    with torch.autograd.set_multithreading_enabled(False), mode, _FakeInputs(mode):
        yield device


def on_fake_gpu(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """`module` (built on the CPU) on the fake device with its floating-point parameters in `dtype` and its
    buffers in theirs (as training and inference place a model). Inside `fake_gpu` only."""
    module.to(fake_device())
    for param in module.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    return module
