"""NCCL's rule, collective tensors on the GPU, on a CPU machine: a real 2-rank gloo run (TP2) of the trainer's
micro-batches, forward, chunked vocab-parallel loss, backward, gradient norm and DP mean, with
`collective_device` answering as under NCCL and every tensor made on the host tracked
(tests/distributed/collective_devices_check.py): no collective called from dsl_scale gets one. A host tensor
all-reduced on purpose fails the run."""

from __future__ import annotations

import json

import pytest

from tests.launching import run

pytestmark = pytest.mark.distributed


def test_dsl_scales_collectives_take_no_host_tensor_under_nccl():
    result = run("torchrun", "tests/distributed/collective_devices_check.py", 2, [])
    counts = [json.loads(line.removeprefix("COLLECTIVES ")) for line in result.stdout.splitlines()
              if line.startswith("COLLECTIVES ")]
    assert len(counts) == 2 and counts[0] == counts[1], result.stdout[-2000:]
    checked = counts[0]
    assert checked.get("cross_entropy.py:all_reduce", 0) > 0, checked  # the TP loss's reductions
    assert checked.get("engine.py:all_reduce") == 1 and checked.get("trainer.py:all_reduce") == 1, checked


def test_a_host_tensor_in_a_collective_fails_the_check():
    with pytest.raises(AssertionError, match="all_reduce from .*engine.py with host-made tensors"):
        run("torchrun", "tests/distributed/collective_devices_check.py", 2, ["plant"])
