"""The counter-based generator (core/counter_rng.py): pinned against an independent pure-Python reference of the
same hash, distributions, independence across keys, draws and elements, and purity (a row's values depend on
its own key words only)."""

from __future__ import annotations

import math

import pytest
import torch

from dsl_scale.core import counter_rng

M32 = (1 << 32) - 1


# ---- the reference: the hash as the module docstring states it, on Python ints, with plain products mod 2³² ----
def ref_mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def ref_lanes(words: list[int]) -> tuple[int, int]:
    a, b = 0x243F6A88, 0x85A308D3
    for word in words:
        bits64 = word & ((1 << 64) - 1)  # two's complement
        for half in (bits64 & M32, bits64 >> 32):
            a, b = ref_mix32(a ^ half), ref_mix32(b ^ half)
    return a, b


def ref_bits(words: list[int], draw: int, j: int) -> int:
    a, b = ref_lanes(words)
    return ref_mix32(ref_mix32(j ^ a) ^ b ^ ref_mix32(ref_mix32(draw ^ 0x13198A2E)))


def ref_uniform(words: list[int], draw: int, j: int) -> float:
    return (ref_bits(words, draw, j) >> 8) / 2**24


def ref_normal(words: list[int], draw: int, j: int) -> float:
    u1 = ((ref_bits(words, draw, 2 * (j // 2)) >> 8) + 1) / 2**24
    u2 = (ref_bits(words, draw, 2 * (j // 2) + 1) >> 8) / 2**24
    r, angle = math.sqrt(-2 * math.log(u1)), 2 * math.pi * u2
    return r * (math.cos(angle) if j % 2 == 0 else math.sin(angle))


def test_bits_uniforms_normals_and_integers_match_the_pure_python_reference():
    positions = torch.tensor([0, 1, 7, 1 << 40, -3])
    key = counter_rng.key((1234, 2, 98765, positions), "cpu")
    shape = (3, 5)
    bits, u = key.bits(shape, 4), key.uniform(shape, 4)
    z, k = key.normal(shape, 5), key.integers(1000, shape, 6)
    assert bits.shape == u.shape == z.shape == k.shape == (5, 3, 5)
    assert u.dtype == z.dtype == torch.float32 and bits.dtype == k.dtype == torch.int64
    for row, p in enumerate(positions.tolist()):
        words = [1234, 2, 98765, p]
        for j in range(15):
            assert bits[row].flatten()[j].item() == ref_bits(words, 4, j)
            assert u[row].flatten()[j].item() == ref_uniform(words, 4, j)  # exact: 24-bit values fit fp32
            assert k[row].flatten()[j].item() == ref_bits(words, 6, j) * 1000 >> 32
            assert z[row].flatten()[j].item() == pytest.approx(ref_normal(words, 5, j), abs=2e-5)


def test_a_key_without_tensor_words_draws_one_shared_stream():
    key = counter_rng.key((5, 6), "cpu")
    assert key.batch_shape == ()
    assert key.uniform((), 1).item() == ref_uniform([5, 6], 1, 0)
    assert key.bits((4,), 0).tolist() == [ref_bits([5, 6], 0, j) for j in range(4)]


def test_uniform_moments_and_range():
    u = counter_rng.key((0, torch.arange(64)), "cpu").uniform((4096,), 0).double()
    assert 0 <= u.min() and u.max() < 1
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 4 * math.sqrt(1 / 180 / n)  # Var of (u − ½)² is 1/180
    counts = torch.histc(u, bins=32, min=0, max=1)
    chi2 = ((counts - n / 32) ** 2 / (n / 32)).sum().item()
    assert chi2 < 61.1, f"chi2 {chi2:.1f} over 31 dof (p = 0.001)"


def test_normal_moments():
    z = counter_rng.key((1, torch.arange(64)), "cpu").normal((4095,), 3).double()  # odd: the last pair half used
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 4 * math.sqrt(2 / n)
    assert abs((z**3).mean().item()) < 4 * math.sqrt(15 / n)
    assert abs((z**4).mean().item() - 3) < 4 * math.sqrt(96 / n)
    assert abs((z.abs() > 1.96).double().mean().item() - 0.05) < 4 * math.sqrt(0.05 * 0.95 / n)


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([x.flatten().double(), y.flatten().double()]))[0, 1].item()


def test_streams_are_uncorrelated_across_neighbouring_keys_draws_and_elements():
    n, bound = 64 * 512, 4.5 / math.sqrt(64 * 512)  # |r| of independent samples: ~N(0, 1/n)
    rows = counter_rng.key((9, 1, 3, torch.arange(65)), "cpu")
    u = rows.uniform((512,), 0)
    assert abs(correlation(u[:-1], u[1:])) < bound, "positions p and p + 1"
    assert abs(correlation(u[:, :-1], u[:, 1:])) < 4.5 / math.sqrt(65 * 511), "elements j and j + 1"
    assert abs(correlation(u[:-1], rows.uniform((512,), 1)[:-1])) < bound, "two draws of one key"
    steps = counter_rng.key((9, 1, 4, torch.arange(64)), "cpu").uniform((512,), 0)
    assert abs(correlation(u[:-1], steps)) < bound, "steps 3 and 4"
    z = rows.normal((512,), 2)
    assert abs(correlation(z[:, 0::2], z[:, 1::2])) < bound * math.sqrt(2), "the two normals of a pair"
    assert n == u[:-1].numel()


def test_a_rows_values_depend_on_its_own_words_only():
    positions = torch.arange(10, 18)
    whole = counter_rng.key((3, positions), "cpu").normal((6, 4), 0)
    halves = [counter_rng.key((3, part), "cpu").normal((6, 4), 0) for part in positions.split(4)]
    assert torch.equal(torch.cat(halves), whole)
    reordered = counter_rng.key((3, positions.flip(0)), "cpu").normal((6, 4), 0)
    assert torch.equal(reordered.flip(0), whole)
    # the first elements of a longer draw are the shorter draw
    assert torch.equal(counter_rng.key((3, positions), "cpu").uniform((40,), 1)[:, :24],
                       counter_rng.key((3, positions), "cpu").uniform((4, 6), 1).flatten(1))


def test_draws_follow_the_device_without_touching_the_host():
    positions = torch.arange(4, device="meta")
    key = counter_rng.key((1, positions), "meta")
    for value in (key.uniform((8,), 0), key.normal((8, 3), 1), key.integers(5, (8,), 2)):
        assert value.device.type == "meta" and value.shape[0] == 4


@pytest.mark.parametrize("words, error", [
    ((torch.tensor([0.5]),), TypeError), ((1 << 63,), ValueError), ((1.0,), TypeError), ((True,), TypeError),
    ((torch.arange(2, device="meta"),), ValueError),
])
def test_bad_key_words_are_refused(words, error):
    with pytest.raises(error):
        counter_rng.key(words, "cpu")


def test_bad_integer_range_is_refused():
    with pytest.raises(ValueError, match="high"):
        counter_rng.key((1,), "cpu").integers(0, (3,), 0)
