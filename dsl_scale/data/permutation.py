"""A seeded permutation of [0, n), evaluated index by index in O(1) memory, for any n.

A balanced Feistel network on 2h-bit words is a bijection of [0, 4^h) whatever its round function; 4^h is
the smallest power of four >= n, so below 4n. Cycle walking (re-apply the network while the image is >= n)
restricts it to a bijection of [0, n): from i < n the walk follows i's cycle to its next member below n,
which no other start below n reaches first. Each round mixes the right half with a round key
`derive_seed(*key, round)` through murmur3's 64-bit finaliser (a bijection of 64-bit words with full
avalanche), so neighbouring indices land far apart; six rounds leave no visible structure (the tests check
runs, correlation and a position-by-value histogram).
"""

from __future__ import annotations

import numpy as np

from dsl_scale.core.seeding import derive_seed

ROUNDS = 6
# Seeds for block orders are derive_seed(seed, PERMUTATION_STREAM, epoch, round): apart from every other draw.
PERMUTATION_STREAM = 0xB10C


def _mix64(x: np.ndarray) -> np.ndarray:
    """murmur3's fmix64 on uint64 words (multiplication wraps mod 2^64)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


class KeyedPermutation:
    """`perm(indices)`: the images of int `indices` (any shape, each in [0, n)) under a bijection keyed by `key`."""

    def __init__(self, n: int, *key: int) -> None:
        if n <= 0:
            raise ValueError(f"a permutation needs n >= 1 elements, got {n}")
        if n > 1 << 62:
            raise ValueError(f"n={n} is beyond the 62-bit domain this permutation covers")
        self.n = n
        self.half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
        self._shift = np.uint64(self.half_bits)
        self._mask = np.uint64((1 << self.half_bits) - 1)
        self._round_keys = [np.uint64(derive_seed(*key, r)) for r in range(ROUNDS)]

    def __call__(self, indices: np.ndarray | int) -> np.ndarray:
        given = np.asarray(indices)
        if given.dtype.kind not in "iu":
            raise TypeError(f"permutation indices must be integers, got dtype {given.dtype}")
        flat = given.reshape(-1)  # 1-d even for a scalar: numpy warns on scalar uint64 overflow, not on arrays
        if flat.size and (flat.min() < 0 or flat.max() >= self.n):
            raise IndexError(f"permutation indices must lie in [0, {self.n}), got [{flat.min()}, {flat.max()}]")
        out = self._network(flat.astype(np.uint64))
        walking = np.flatnonzero(out >= self.n)
        while walking.size:
            out[walking] = self._network(out[walking])
            walking = walking[out[walking] >= self.n]
        return out.astype(np.int64).reshape(given.shape)

    def _network(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._shift, x & self._mask
        for key in self._round_keys:
            left, right = right, left ^ (_mix64(right ^ key) & self._mask)
        return (left << self._shift) | right


def epoch_order(seed: int, epoch: int, n: int) -> KeyedPermutation:
    """Epoch `epoch`'s order of n items (blocks, or webdataset shards): position p holds item order(p)."""
    return KeyedPermutation(n, seed, PERMUTATION_STREAM, epoch)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The whole order as an array (for small n and tests; training evaluates `epoch_order` pointwise)."""
    return epoch_order(seed, epoch, n)(np.arange(n, dtype=np.int64))
