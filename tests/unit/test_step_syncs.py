"""Host-device syncs on the training step: tools/bench_train.py's counter, the trainer's one read per log interval
for the step metrics, and one collective with one read per step for the stop decision."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from dsl_scale.core import seeding
from tests.unit.test_bench_all import load_tool


def test_the_cpu_counter_counts_reads_by_dsl_scale_code_only_and_restores_tensor():
    bench = load_tool("bench_train")
    before = dict(torch.Tensor.__dict__)
    with bench.SyncCounter("cpu") as syncs:
        seeding.per_example(torch.arange(3), 1)  # one .tolist() in dsl_scale/core/seeding.py
        float(torch.ones(()))  # this file's own read: not the framework's
    assert syncs.count == 1 and list(syncs.sites)[0].startswith("dsl_scale/core/seeding.py:")
    assert {k: before.get(k) for k in bench.SyncCounter.READS} == {
        k: torch.Tensor.__dict__.get(k) for k in bench.SyncCounter.READS}


def test_step_records_are_read_in_one_go():
    from dsl_scale.train.trainer import _read_values

    bench = load_tool("bench_train")
    records = [{"step": i, "loss": torch.tensor(0.5 * i), "grad_norm": float(i), "x": torch.tensor([2.0 * i])}
               for i in range(5)]
    with bench.SyncCounter("cpu") as syncs:
        done = _read_values(records)
    assert syncs.count == 1, syncs.sites
    assert done == [{"step": i, "loss": 0.5 * i, "grad_norm": float(i), "x": 2.0 * i} for i in range(5)]
    assert all(type(r["loss"]) is float for r in done)


def test_the_stop_decision_is_one_collective_and_one_read(process_group):
    from dsl_scale.train.trainer import Trainer

    bench = load_tool("bench_train")
    trainer = Trainer.__new__(Trainer)  # only what _stop_flags reads
    trainer.topo = SimpleNamespace(rank=0)
    trainer.stop_signal = SimpleNamespace(received=None)
    with bench.SyncCounter("cpu") as syncs:
        assert trainer._stop_flags(False) == (False, False)
    assert syncs.count == 1
    assert trainer._stop_flags(True) == (True, False)
    trainer.stop_signal.received = 10  # SIGUSR1
    assert trainer._stop_flags(False) == (False, True)
