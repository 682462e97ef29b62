"""The on-the-fly block order: a keyed bijection of [0, N), and GlobalBatches over a 10^9-block index in flat memory."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import torch

from dsl_scale.data.loader import GlobalBatches
from dsl_scale.data.permutation import KeyedPermutation, epoch_order, epoch_permutation

AWKWARD = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 100, 255, 257, 1000, 1023, 1024, 1025, 4097, 65535, 65537]


@pytest.mark.parametrize("n", AWKWARD)
def test_is_a_bijection(n):
    order = epoch_permutation(11, 2, n)
    assert order.dtype == np.int64 and order.shape == (n,)
    assert np.array_equal(np.sort(order), np.arange(n))
    pointwise = epoch_order(11, 2, n)
    assert all(pointwise(i).item() == order[i] for i in range(0, n, max(1, n // 37)))  # scalar = vectorised


def test_keyed_by_seed_and_epoch():
    n = 10_000
    base = epoch_permutation(0, 0, n)
    for other in (epoch_permutation(1, 0, n), epoch_permutation(0, 1, n), epoch_permutation(2**40 + 5, 0, n)):
        assert np.mean(other == base) < 0.01  # agreeing positions: ~1/n for independent orders
    assert np.array_equal(base, epoch_permutation(0, 0, n))  # and a pure function of the key
    assert len({tuple(epoch_permutation(s, e, 5)) for s in range(4) for e in range(4)}) > 8


@pytest.mark.parametrize("n", [100_003, 2**17, 2**17 + 1])
def test_looks_shuffled(n):
    order = epoch_permutation(5, 0, n)
    positions = np.arange(n)
    assert abs(np.corrcoef(positions, order)[0, 1]) < 5 / np.sqrt(n)  # ~N(0, 1/n) for a random permutation
    assert np.sum(np.diff(order) == 1) < 10  # successors kept next to each other: ~1 expected
    assert np.sum(np.abs(np.diff(order)) < n // 1000) < 10 * n / 1000  # neighbours land far apart
    cells = np.histogram2d(positions, order, bins=10)[0]  # every tenth of positions spread over every tenth
    assert np.all(np.abs(cells - n / 100) < 6 * np.sqrt(n / 100))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n >= 1"):
        KeyedPermutation(0, 1)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        epoch_order(0, 0, 10)(np.array([3, 10]))
    with pytest.raises(TypeError, match="integers"):
        epoch_order(0, 0, 10)(np.array([0.5]))


class VirtualBlocks:
    """N blocks that exist only as a function of their index: block i is [i, i, i, i]."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return np.full(4, i, dtype=np.int64)


BILLION = 10**9
GB = 64
FAR_STEPS = (0, 10**6, 3 * 10**7)  # 3e7 * 64 = 1.92e9 positions: the second epoch


def test_a_billion_blocks_in_flat_memory():
    """The old per-epoch materialised permutation would need 8 GB per epoch here; the order needs a few kB."""
    blocks = VirtualBlocks(BILLION)
    tracemalloc.start()
    try:
        batches = GlobalBatches(blocks, GB, 0, 1, seed=3)
        served = {step: batches.batch_at(step) for step in FAR_STEPS}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    for step, batch in served.items():
        positions = np.arange(step * GB, (step + 1) * GB)
        epoch = positions[0] // BILLION
        assert batch.shape == (GB, 4) and batch.dtype == torch.int64
        assert batch[:, 0].tolist() == epoch_order(3, int(epoch), BILLION)(positions % BILLION).tolist()
        assert len(set(batch[:, 0].tolist())) == GB


def test_billion_block_batches_resume_exactly_and_do_not_depend_on_the_dp_size():
    blocks = VirtualBlocks(BILLION)
    start = 3 * 10**7 - 2
    continuous = GlobalBatches(blocks, GB, 0, 1, seed=9, start_step=start - 3)
    reference = list(itertools.islice(continuous, 8))[3:]  # steps start .. start + 4
    resumed = list(itertools.islice(GlobalBatches(blocks, GB, 0, 1, seed=9, start_step=start), 5))
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))
    halves = [GlobalBatches(blocks, GB, r, 2, seed=9, start_step=start) for r in range(2)]
    for k, whole in enumerate(reference):
        assert torch.equal(torch.cat([h.batch_at(start + k) for h in halves]), whole)


def test_epoch_straddling_steps_and_tiny_datasets():
    """A step whose positions cross an epoch boundary, and global batches larger than the dataset."""
    for n, gb in ((10, 4), (3, 8), (1, 5)):
        drawn = [i for step in range(6) for i in GlobalBatches(VirtualBlocks(n), gb, 0, 1, seed=2).indices_at(step)]
        epochs = [drawn[e * n : (e + 1) * n] for e in range(len(drawn) // n)]
        assert all(ids == epoch_permutation(2, e, n).tolist() for e, ids in enumerate(epochs))
