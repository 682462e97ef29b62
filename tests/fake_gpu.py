"""A fake GPU for CPU machines: torch's PrivateUse1 device, registered as a Python backend and named `fakegpu`,
under FakeTensorMode. Unlike `meta` (which lets `F.embedding(meta weights, cpu ids)` and matmuls with CPU
tensors run), every operation mixing its tensors with CPU tensors raises at its line, as CUDA does; indexing,
autograd, SDPA, dropout, in-place RNG and torch's fused AdamW work. Nothing is computed: tensors carry shapes,
dtypes and devices only, so a traced step takes about a second.

What it cannot do: read a device value on the host (`.item()`, `.tolist()`, `nonzero`, a data-dependent branch:
an error, or placeholders with `host_reads=True`) and make a `torch.Generator` on the device. Host tensors stay
real; a TorchFunctionMode sends work for the device into FakeTensorMode (real tensors are turned fake before
`.to()` / `copy_()`), and FakeTensorMode's constant folding of small tensors is off (CONSTANT_NUMEL_LIMIT = 0).

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


_HOST_READS = (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.__bool__,
               torch.Tensor.__int__, torch.Tensor.__float__)
_MOVES = (torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cuda)


def _fake_devices(values) -> bool:
    return any((isinstance(v, torch.device) or isinstance(v, str) and v.startswith(NAME)) and _is_fake_device(v)
               for v in values)


class _FakeDevice(TorchFunctionMode):
    """Under an active FakeTensorMode, keeps the host real: an operation with no fake tensor and no fake device among
    its arguments runs for real with the mode suspended (host bookkeeping, time grids and CPU generators keep their
    values); one on fake tensors, or asked for the fake device, runs fake (with allocations inside the op fake
    too); a real tensor moved or copied to the device (`.to()`, `copy_()`) or `torch.tensor(data, device=fakegpu)`
    is made on the host and turned fake.

    With `host_reads`, reading a fake tensor's values on the host (`.item()`, `.tolist()`, `nonzero`, truth) gives
    placeholders of the right shape (ones; every element nonzero; true) instead of failing, so host-driven loops
    (the samplers') run on: the values they read mean nothing, only the devices are checked."""

    def __init__(self, mode, host_reads: bool):
        super().__init__()
        self.mode = mode
        self.host_reads = host_reads

    def _fake(self, value):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            return self.mode.from_tensor(value)
        return value

    def _placeholder(self, func, tensor: torch.Tensor):
        shape = tuple(tensor.shape)
        if func is torch.Tensor.__bool__:
            return True
        with torch.utils._python_dispatch._disable_current_modes():
            if func in (torch.Tensor.item, torch.Tensor.__int__, torch.Tensor.__float__):
                return False if tensor.dtype == torch.bool else func(torch.ones((), dtype=tensor.dtype, device="cpu"))
            if func is torch.Tensor.tolist:
                return torch.ones(shape, dtype=tensor.dtype, device="cpu").tolist()
            every = torch.ones(shape, dtype=torch.bool, device="cpu").nonzero()
        return self.mode.from_tensor(every).to(tensor.device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor

        kwargs = kwargs or {}
        if self.host_reads and func in _HOST_READS and isinstance(args[0], FakeTensor) and not kwargs:
            return self._placeholder(func, args[0])
        if func in (torch.tensor, torch.as_tensor) and _is_fake_device(kwargs.get("device")):
            device = kwargs.pop("device")
            return self._fake(func(*args, **kwargs)).to(device)
        if func in _MOVES and (_fake_devices([*args, *kwargs.values()])
                               or any(isinstance(a, FakeTensor) for a in args)):
            return func(*(self._fake(a) for a in args), **kwargs)
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(isinstance(v, FakeTensor) for v in leaves) or _fake_devices(leaves):
            return func(*args, **kwargs)  # FakeTensorMode is active: allocations made inside ops are fake too
        with torch.utils._python_dispatch._disable_current_modes():  # host work stays real
            return func(*args, **kwargs)


def _point_compute_device_at(monkeypatch, device: torch.device) -> None:
    """compute_device() → `device` in core/device.py and in every dsl_scale module that imported it by name."""
    original = device_lib.compute_device
    for name, module in list(sys.modules.items()):
        if name.startswith("dsl_scale") and getattr(module, "compute_device", None) is original:
            monkeypatch.setattr(module, "compute_device", lambda: device)


@contextlib.contextmanager
def fake_gpu(monkeypatch, host_reads: bool = False) -> Iterator[torch.device]:
    """The fake device, with compute_device() pointing at it (see the module docstring). `host_reads`: placeholder
    values for host reads (see _FakeDevice) instead of an error; the training step runs without."""
    import torch._subclasses.fake_tensor as fake_tensor

    device = fake_device()
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 0)
    _point_compute_device_at(monkeypatch, device)
    # real host tensors meeting fake ones are converted, then the device check applies (a 0-dim CPU scalar
    # passes, as on CUDA; anything else on the CPU raises "found at least two devices")
    mode = fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)
    # backward on the calling thread: the autograd engine sizes its per-device threads at the process's first
    # backward, which may have run before the fake device existed
    with torch.autograd.set_multithreading_enabled(False), mode, _FakeDevice(mode, host_reads):
        yield device


def on_fake_gpu(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """`module` (built on the CPU) on the fake device with its floating-point parameters in `dtype` and its
    buffers in theirs (as training and inference place a model). Inside `fake_gpu` only."""
    module.to(fake_device())
    for param in module.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    return module
