"""Counter-based random numbers: every value is a pure function of (key words, draw id, element index), computed
with vectorised integer ops on any device, so a [b, L] or [b, L, d] draw is a fixed batch of kernels with no
host loop, no generator state and no host-device sync.

The hash. `mix32` is the "lowbias32" integer mixer (shift-xor, multiply, shift-xor, multiply, shift-xor; the
constants from C. Wellons' hash-prospector search), a bijection of 32-bit words with strong avalanche. A key is
two 32-bit lanes (a, b): each key word (an int, or an int64 tensor whose elements are per-row words) is split
into its low and high 32 bits and each half is folded into both lanes, `lane = mix32(lane ^ half)`, from two
different starting values. Element j of draw `draw` is

    bits = mix32(mix32(j ^ a) ^ b ^ D),    D = mix32(mix32(draw ^ DRAW_SALT)),

so one key's stream is a shifted copy of another's only if their b lanes collide and their a lanes differ in the
counter's low bits only (~n·2⁻⁶⁴ per pair of keys, n the draw's size), and two draws of one key differ from
the second round on. Word values are hashed as their 64-bit two's-complement bits.

Arithmetic. Everything is int64 holding values in [0, 2³²): shifts of non-negative values are logical, and a
32 × 32-bit product is formed from 16-bit halves of the constant (each partial product < 2⁴⁸), so no
operation overflows int64 and the bits are identical on every device, backend and library version.

Precision. Uniforms carry 24 random bits, (bits >> 8)·2⁻²⁴, in fp32 on every device: every value is exactly
representable in fp32 (and fp64), so uniforms are bit-identical across device types and a fp32 accelerator
pays no fp64 cost; the 2⁻²⁴ resolution is far finer than any probability the objectives compare against.
Normals are Box-Muller pairs from two such uniforms in fp32 (tails truncated at |z| ≈ 5.8σ, a mass of ~1e-8);
their log/sqrt/cos may differ by an ulp between device types, so normals are a pure function of the keys on a
given device type. `integers` takes all 32 bits (bias ≤ high / 2³²).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod, tau

import torch

MASK32 = 0xFFFFFFFF
_LANE_A, _LANE_B, DRAW_SALT = 0x243F6A88, 0x85A308D3, 0x13198A2E  # arbitrary distinct starting values
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

Word = int | torch.Tensor  # a 32-bit lane is a Python int until a tensor word turns it into a tensor


def _mul32(x: Word, c: int) -> Word:
    """(x · c) mod 2³² for x in [0, 2³²), without an int64 product above 2⁴⁹."""
    low, high = c & 0xFFFF, c >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def mix32(x: Word) -> Word:
    """lowbias32 on 32-bit words held in int64 tensors or Python ints."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _halves(word: Word) -> tuple[Word, Word]:
    if isinstance(word, torch.Tensor):
        if word.is_floating_point() or word.is_complex() or word.dtype == torch.bool:
            raise TypeError(f"key words must be integers, got a {word.dtype} tensor")
        word = word.long()
    else:
        if isinstance(word, bool) or not hasattr(word, "__index__"):
            raise TypeError(f"key words must be integers or integer tensors, got {word!r}")
        word = operator.index(word)
        if not _INT64_MIN <= word <= _INT64_MAX:
            raise ValueError(f"key word {word} is outside the int64 range")
    return word & MASK32, (word >> 32) & MASK32


@dataclass(frozen=True)
class Key:
    """Two 32-bit lanes, Python ints or int64 tensors of the batch shape (one key per row), and the device that
    draws are made on."""

    a: Word
    b: Word
    device: torch.device

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(torch.broadcast_shapes(*(x.shape for x in (self.a, self.b) if isinstance(x, torch.Tensor))))

    def bits(self, shape: tuple[int, ...], draw: int, start: int = 0) -> torch.Tensor:
        """Uniform 32-bit words as int64 [*batch_shape, *shape]: element j of a row hashes (its key, draw, start + j),
        so a draw of part of a larger array (a sequence-parallel shard) gives that part of the whole draw."""
        n = prod(shape)
        if start < 0 or start + n > 1 << 32:
            raise ValueError(f"a draw of shape {shape} from element {start} goes past 2^32 elements per key")
        counters = torch.arange(start, start + n, dtype=torch.long, device=self.device).view(shape)
        a, b = (x.view(*x.shape, *(1,) * len(shape)) if isinstance(x, torch.Tensor) else x
                for x in (self.a, self.b))
        return hash_bits(counters, a, b, draw_salt(draw))

    def uniform(self, shape: tuple[int, ...], draw: int, start: int = 0) -> torch.Tensor:
        """fp32 uniforms in [0, 1) with 24 random bits (see the module docstring); `start` as in `bits`."""
        return uniform_from_bits(self.bits(shape, draw, start))

    def normal(self, shape: tuple[int, ...], draw: int) -> torch.Tensor:
        """fp32 standard normals by Box-Muller: elements 2m and 2m + 1 are the cosine and sine of pair m, whose
        two uniforms are words 2m and 2m + 1 of the draw (so element j depends on the key, draw and j only)."""
        n = prod(shape)
        pairs = (n + 1) // 2
        words = self.bits((pairs, 2), draw) >> 8
        radius_u = (words[..., 0] + 1).float() * 2.0**-24  # in (0, 1]: log is finite
        angle = words[..., 1].float() * (tau * 2.0**-24)
        radius = torch.sqrt(-2.0 * torch.log(radius_u))
        z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
        return z.flatten(-2)[..., :n].reshape(*z.shape[:-2], *shape)

    def integers(self, high: int, shape: tuple[int, ...], draw: int) -> torch.Tensor:
        """int64 uniform on {0, …, high − 1}: the top bits of high · word / 2³² (high ≤ 2³¹)."""
        if not 0 < high <= 1 << 31:
            raise ValueError(f"integers: high must be in [1, 2^31], got {high}")
        return (self.bits(shape, draw) * high) >> 32


def draw_salt(draw: int) -> int:
    """D of the module docstring: what tells a key's draws apart (host-side, a Python int)."""
    return mix32(mix32((draw & MASK32) ^ DRAW_SALT))


def hash_bits(counters: torch.Tensor, a: Word, b: Word, salt: Word) -> torch.Tensor:
    """mix32(mix32(j ^ a) ^ b ^ D): element j of a draw, for counters j and key lanes (a, b) that broadcast
    against each other (Key.bits; a caller that lays out its own counters, such as the model's dropout)."""
    return mix32(mix32(counters ^ a) ^ b ^ salt)


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """fp32 uniforms in [0, 1) with 24 random bits of each word (Key.uniform's)."""
    return (bits >> 8).float() * 2.0**-24


def _same_device(found: torch.device, wanted: torch.device) -> bool:
    return found.type == wanted.type and (wanted.index is None or found.index in (None, wanted.index))


def key(words: Sequence[Word] | Word, device: torch.device | str) -> Key:
    """Fold `words` (ints, or integer tensors on `device` whose shapes broadcast to the batch shape) into a Key.

    Int words fold on the host (pure Python); tensor words fold elementwise on their device. Put the words
    shared by the whole batch first, so their folding costs no kernels.
    """
    device = torch.device(device)
    if isinstance(words, (int, torch.Tensor)):
        words = (words,)
    a, b = _LANE_A, _LANE_B
    for word in words:
        if isinstance(word, torch.Tensor) and not _same_device(word.device, device):
            raise ValueError(f"a key word on {word.device} for draws on {device}")
        for half in _halves(word):
            a, b = mix32(a ^ half), mix32(b ^ half)
    return Key(a, b, device)
