"""The CPU bridge for megatron-core: module-local CUDA stand-ins and CPU RNG streams."""

from __future__ import annotations

import importlib

import pytest
import torch

from dsl_scale.parallel import cpu_compat


def test_tracker_streams_are_seeded_isolated_and_resumable():
    tracker = cpu_compat.CpuRNGStatesTracker()
    tracker.add("a", 11)
    tracker.add("b", 12)
    torch.manual_seed(0)
    outer_before = torch.get_rng_state()
    with tracker.fork("a"):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outer_before), "forking leaves the default stream alone"
    with tracker.fork("a"):
        second = torch.rand(3)
    assert not torch.equal(first, second), "a stream continues where it stopped"
    replay = cpu_compat.CpuRNGStatesTracker()
    replay.add("a", 11)
    with replay.fork("a"):
        assert torch.equal(torch.rand(3), first)
    saved = tracker.get_states()
    with tracker.fork("b"):
        b_draw = torch.rand(2)
    tracker.set_states(saved)
    with tracker.fork("b"):
        assert torch.equal(torch.rand(2), b_draw)
    with pytest.raises(ValueError, match="already"):
        tracker.add("c", 11)
    with pytest.raises(KeyError):
        with tracker.fork("missing"):
            pass


def test_tensor_parallel_ranks_get_distinct_streams_shared_data_parallel_stream(process_group):
    from megatron.core import tensor_parallel

    cpu_compat.install()
    draws = {}
    for tp_rank in (0, 1):
        cpu_compat.seed_parallel_rng(seed=3, tp_rank=tp_rank)
        tracker = tensor_parallel.get_cuda_rng_tracker()
        with tracker.fork(cpu_compat.MODEL_PARALLEL_RNG):
            model_parallel = torch.rand(4)
        with tracker.fork(cpu_compat.DATA_PARALLEL_RNG):
            shared = torch.rand(4)
        draws[tp_rank] = (model_parallel, shared)
    assert not torch.equal(draws[0][0], draws[1][0])
    assert torch.equal(draws[0][1], draws[1][1])


def test_install_bridges_only_the_megatron_modules():
    assert cpu_compat.install() is True
    schedules = importlib.import_module("megatron.core.pipeline_parallel.schedules")
    p2p = importlib.import_module("megatron.core.pipeline_parallel.p2p_communication")
    assert schedules.torch.zeros([], device="cuda").device.type == "cpu"
    assert p2p.torch.cuda.current_device() == torch.device("cpu")
    assert p2p.torch.cuda.synchronize() is None
    assert p2p.torch.float32 is torch.float32, "everything else is the real torch"
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")  # the real torch module is untouched


def test_install_is_inert_when_a_gpu_is_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.install() is False
