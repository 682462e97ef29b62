"""The device policy (dsl_scale/core/device.py) holds by construction: outside model/ and data/ (whose tensors
follow the module's parameters or are host-side shards) and the exported HF modeling code, every torch tensor
factory says where its tensor lives and every torch.load where its tensors go, so no CPU-only tensor can slip
into the GPU path."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from dsl_scale.core.device import CPU, collective_device, compute_device

PACKAGE = Path(__file__).resolve().parents[2] / "dsl_scale"
# model code (the exported Hugging Face modeling file too: its parameters must follow the device context that
# from_pretrained builds them under)
EXEMPT = {"model", "data", "checkpoint/hf_code"}
FACTORIES = {"zeros", "ones", "empty", "full", "rand", "randn", "randint", "randperm", "arange", "tensor",
             "as_tensor", "linspace", "logspace", "eye"}


def unplaced_calls(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            continue
        keywords = {k.arg for k in node.keywords}
        name = node.func.attr
        if (name in FACTORIES and "device" not in keywords) or (name == "load" and "map_location" not in keywords):
            found.append((node.lineno, f"torch.{name}"))
    return found


def test_the_scan_catches_what_it_should():
    assert unplaced_calls("torch.zeros(3)\ntorch.load(f)\ntorch.rand(2, generator=g)") == [
        (1, "torch.zeros"), (2, "torch.load"), (3, "torch.rand")]
    assert unplaced_calls('torch.zeros(3, device="cpu")\ntorch.load(f, map_location=d)\nx.new_zeros(3)') == []


def test_every_tensor_factory_outside_model_and_data_names_its_device():
    offenders = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE).parts
        if parts[0] in EXEMPT or "/".join(parts[:2]) in EXEMPT:
            continue
        offenders += [f"{file.relative_to(PACKAGE.parent)}:{line}: {call}" for line, call in
                      unplaced_calls(file.read_text())]
    assert not offenders, "say where each tensor lives (device= / map_location=):\n" + "\n".join(offenders)


def test_compute_and_collective_devices_on_this_machine(process_group):
    import torch.distributed as dist

    assert dist.get_backend() == "gloo"
    assert collective_device() == CPU  # gloo reaches CPU tensors only in this setting
    assert compute_device() == (torch.device("cuda", 0) if torch.cuda.is_available() else CPU)
