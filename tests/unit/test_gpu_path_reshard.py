"""A layout-free resume writes AdamW's update count where torch's Adam keeps it for the tensor it updates: on
that tensor's device in fp32 for the fused (or capturable) kernel, which reads it there on a GPU, else on the
CPU. Checked against the state torch's AdamW creates itself, on the fake GPU (tests/fake_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from dsl_scale.checkpoint.reshard import write_adam_state
from tests.fake_gpu import fake_gpu


def adamw(param: torch.nn.Parameter, mode: str) -> torch.optim.AdamW:
    return torch.optim.AdamW([param], lr=1e-3, **{mode: True})


@pytest.mark.parametrize("mode", ["fused", "capturable"])
def test_the_restored_step_is_where_and_what_torchs_adamw_keeps_it(mode, monkeypatch):
    with fake_gpu(monkeypatch) as device:
        reference = torch.nn.Parameter(torch.zeros(8, device=device))
        reference.grad = torch.zeros(8, device=device)
        built = adamw(reference, mode)
        built.step()  # torch's own state
        expected = built.state[reference]["step"]

        restored = torch.nn.Parameter(torch.zeros(8, device=device))
        optimizer = adamw(restored, mode)
        step = write_adam_state(optimizer, restored, 7)["step"]
        assert (step.device, step.dtype) == (expected.device, expected.dtype), mode
        assert step.device == device
        restored.grad = torch.zeros(8, device=device)
        for key in ("exp_avg", "exp_avg_sq"):
            optimizer.state[restored][key] = torch.zeros(8, device=device)
        optimizer.step()  # the restored state is one the kernel takes


def test_the_foreach_kernel_keeps_its_step_on_the_host(monkeypatch):
    """It reads the count on the host (a value the fake GPU cannot trace): torch's own state, on real tensors."""
    reference = torch.nn.Parameter(torch.zeros(8))
    reference.grad = torch.zeros(8)
    built = adamw(reference, "foreach")
    built.step()
    expected = built.state[reference]["step"]
    with fake_gpu(monkeypatch) as device:
        restored = torch.nn.Parameter(torch.zeros(8, device=device))
        step = write_adam_state(adamw(restored, "foreach"), restored, 7)["step"]
        assert (step.device, step.dtype) == (expected.device, expected.dtype) == (torch.device("cpu"), torch.float32)


def test_a_tensor_outside_the_optimizer_is_named():
    optimizer = adamw(torch.nn.Parameter(torch.zeros(2)), "foreach")
    with pytest.raises(KeyError, match=r"shape \(3,\) is in none of the optimizer's parameter groups"):
        write_adam_state(optimizer, torch.zeros(3), 1)
