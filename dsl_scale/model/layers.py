"""Small replicated pieces of the DiT: LayerNorm, adaLN modulation, rotary, noise embedding."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LayerNormNoBias(nn.Module):
    """LayerNorm with a weight and no bias, computed in fp32 (MDLM's LayerNorm)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps) * self.weight.float()
        return y.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Rotary(nn.Module):
    """Rotary position embedding, rotate-half convention, applied to q and k."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        # the exponents from NumPy: a partitioning build context (ZeRO-3's zero.Init) casts what torch's
        # factories make to the training dtype, and bf16 frequencies put angles off by up to 0.45 rad at L = 1024
        exponents = torch.from_numpy(np.arange(0, head_dim, 2, dtype=np.float32)) / head_dim
        inv_freq = 1.0 / (base ** exponents)
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def cos_sin(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the signed sin of `apply_rotary`, [seq_len, head_dim] each."""
        positions = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), signed_sin(angles.sin())


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) · sin == roll(x, d/2) · signed_sin(sin)."""
    first, second = sin.chunk(2, dim=-1)
    return torch.cat((-first, second), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x · cos + rotate_half(x) · sin in three kernels (roll, mul, addcmul; one under torch.compile), with `sin`
    from `signed_sin`. x: [s, b, ..., head_dim] (q and k together: [s, b, heads, 2, head_dim]); cos/sin:
    [s, head_dim]."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    cos, sin = cos.view(shape).to(x.dtype), sin.view(shape).to(x.dtype)
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def timestep_features(sigma: torch.Tensor, dim: int = 256, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of the noise level: [cos(σ·f), sin(σ·f)], f log-spaced."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = sigma.float()[:, None] * freqs.to(sigma.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class NoiseEmbedder(nn.Module):
    """σ → 256 sinusoidal features → Linear → SiLU → Linear (MDLM's `sigma_map`)."""

    def __init__(self, cond_dim: int, feature_dim: int = 256):
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(nn.Linear(feature_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        features = timestep_features(sigma, self.feature_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
