"""The registry of framework patches: version guard, undo, and declared ranges that hold for what is installed."""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from dsl_scale.core import patches

on_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="the megatron CPU bridge is inert with a GPU")


def fake_version(monkeypatch: pytest.MonkeyPatch, distribution: str, version: str | None) -> None:
    real = patches.installed_version
    monkeypatch.setattr(patches, "installed_version", lambda d: version if d == distribution else real(d))


@pytest.mark.parametrize(("version", "tested", "inside"), [
    ("0.16.1", ">=0.16,<0.17", True),
    ("0.16", ">=0.16,<0.17", True),
    ("0.17.0", ">=0.16,<0.17", False),
    ("0.15.9", ">=0.16,<0.17", False),
    ("2.13.0+cpu", ">=2.5,<2.14", True),
    ("0.17.0rc1", ">=0.16,<0.17", False),
    ("0.19.8", "==0.19.8", True),
    ("0.19.8", "!=0.19.8", False),
    ("unknown", ">=0", False),
])
def test_version_ranges(version, tested, inside):
    assert patches.version_in_range(version, tested) is inside


@on_cpu
def test_an_untested_version_fails_clearly_and_patches_nothing(monkeypatch):
    from dsl_scale.parallel import cpu_compat

    schedules = importlib.import_module("megatron.core.pipeline_parallel.schedules")
    monkeypatch.delenv(patches.OVERRIDE_ENV, raising=False)
    fake_version(monkeypatch, "megatron-core", "0.17.0")
    with pytest.raises(patches.UntestedVersionError) as error:
        cpu_compat.install()
    message = str(error.value)
    for part in ("megatron-cpu-bridge", "megatron-core 0.17.0 is installed", ">=0.16,<0.17", patches.OVERRIDE_ENV):
        assert part in message
    assert schedules.torch is torch
    assert not patches.is_applied(cpu_compat.PATCH)

    fake_version(monkeypatch, "megatron-core", None)
    with pytest.raises(patches.UntestedVersionError, match="megatron-core is not installed"):
        cpu_compat.install()


@on_cpu
def test_the_override_turns_the_error_into_a_warning(monkeypatch):
    from dsl_scale.parallel import cpu_compat

    fake_version(monkeypatch, "megatron-core", "0.17.0")
    monkeypatch.setenv(patches.OVERRIDE_ENV, "1")
    with pytest.warns(patches.UntestedVersionWarning, match="megatron-cpu-bridge"):
        assert cpu_compat.install() is True
    assert patches.is_applied(cpu_compat.PATCH)
    schedules = importlib.import_module("megatron.core.pipeline_parallel.schedules")
    assert isinstance(schedules.torch, cpu_compat._CpuTorch)


def test_requirements_are_guarded_too(monkeypatch):
    monkeypatch.delenv(patches.OVERRIDE_ENV, raising=False)
    patches.require("deepspeed-zero-optimizer-state")  # the installed DeepSpeed is the tested one
    fake_version(monkeypatch, "deepspeed", "0.20.0")
    with pytest.raises(patches.UntestedVersionError, match="deepspeed-zero-optimizer-state.*deepspeed 0.20.0"):
        patches.require("deepspeed-zero-optimizer-state")
    with pytest.raises(ValueError, match="is a requirement"):
        patches.apply("deepspeed-zero-optimizer-state")
    with pytest.raises(KeyError):
        patches.require("no-such-entry")


def test_apply_is_idempotent_and_undo_all_runs_latest_first(monkeypatch):
    calls = []
    for name in ("first", "second"):
        monkeypatch.setitem(patches.REGISTRY, name, patches.Entry(
            name, patches.PATCH, "torch", ">=2", "tests.unit.test_patches", "a test patch"))

        def apply_fn(name=name):
            calls.append(f"apply {name}")
            return lambda: calls.append(f"undo {name}")

        monkeypatch.setitem(patches._IMPLEMENTATIONS, name, apply_fn)
    patches.apply("first")
    patches.apply("second")
    patches.apply("first")
    assert patches.applied()[-2:] == ["first", "second"]
    patches.undo_all()
    assert calls == ["apply first", "apply second", "undo second", "undo first"]
    assert not patches.is_applied("first") and patches.undo("first") is False


@on_cpu
def test_undo_restores_the_megatron_originals():
    from megatron.core.tensor_parallel import random as megatron_random

    from dsl_scale.parallel import cpu_compat

    modules = [importlib.import_module(name) for name in cpu_compat.PATCHED_MODULES]
    tracker = megatron_random._CUDA_RNG_STATE_TRACKER
    initialized = megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED
    assert all(module.torch is torch for module in modules)
    assert cpu_compat.install() is True
    assert all(isinstance(module.torch, cpu_compat._CpuTorch) for module in modules)
    assert isinstance(megatron_random._CUDA_RNG_STATE_TRACKER, cpu_compat.CpuRNGStatesTracker)
    patches.undo_all()
    assert all(module.torch is torch for module in modules)
    assert megatron_random._CUDA_RNG_STATE_TRACKER is tracker
    assert megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED is initialized
    assert cpu_compat.install() is True, "applies again after an undo"
    assert isinstance(modules[0].torch, cpu_compat._CpuTorch)


def test_undo_restores_deepspeeds_trace_check():
    from deepspeed.runtime.zero import partitioned_param_coordinator as coordinator

    from dsl_scale.parallel import pipeline

    original = coordinator.assert_ints_same_as_other_ranks
    pipeline.zero3_checks_within_stage()
    assert coordinator.assert_ints_same_as_other_ranks is pipeline._same_across_stage_replicas
    patches.undo(pipeline.ZERO3_TRACE_CHECK)
    assert coordinator.assert_ints_same_as_other_ranks is original


def test_undoing_the_streaming_shim_removes_only_our_placeholder(monkeypatch):
    from dsl_scale.data import streaming_compat

    monkeypatch.setattr(streaming_compat, "_torchvision_importable", lambda: False)
    monkeypatch.delitem(sys.modules, "streaming.vision", raising=False)
    streaming = streaming_compat.import_streaming()
    assert streaming.MDSWriter
    placeholder = sys.modules["streaming.vision"]
    assert placeholder.DSL_SCALE_PLACEHOLDER is True
    patches.undo_all()
    assert "streaming.vision" not in sys.modules
    assert streaming_compat.import_streaming() is streaming
    assert sys.modules["streaming.vision"] is placeholder, "re-applied: the same placeholder object"
    patches.undo_all()

    foreign = types.ModuleType("streaming.vision")
    monkeypatch.setitem(sys.modules, "streaming.vision", foreign)
    streaming_compat.import_streaming()
    patches.undo_all()
    assert sys.modules["streaming.vision"] is foreign


@pytest.mark.parametrize("name", sorted(patches.REGISTRY))
def test_every_entry_was_written_against_the_installed_version(name, monkeypatch):
    """Fails on an upgrade of a patched framework: re-check the patch, then widen its range."""
    monkeypatch.delenv(patches.OVERRIDE_ENV, raising=False)
    entry = patches.REGISTRY[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert patches.check(name) == patches.installed_version(entry.distribution)
    home = importlib.import_module(entry.home)
    assert name in Path(home.__file__).read_text(encoding="utf-8"), f"{entry.home} no longer uses {name!r}"
    if entry.kind == patches.PATCH:
        assert name in patches._IMPLEMENTATIONS, f"importing {entry.home} registers no implementation of {name!r}"
