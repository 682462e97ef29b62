"""Noise schedules (docs/method.md §3): the log-linear α_t = 1 − (1 − ε)t and antithetic time draws."""

from __future__ import annotations

import torch


def log_linear_alpha(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return 1 - (1 - eps) * t


def log_linear_alpha_derivative(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.full_like(t, -(1 - eps))


def log_linear_sigma(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """σ(t) = −log α_t, the noise level a time-conditioned backbone is fed."""
    return -torch.log(log_linear_alpha(t, eps))


def antithetic_times(n: int, u: float | torch.Tensor, eps: float = 1e-3, dtype=torch.float64) -> torch.Tensor:
    """t_i = ((u + i)/n mod 1)·(1 − ε) + ε for i < n: evenly spread times with one random offset u."""
    return antithetic_times_at(torch.arange(n, device="cpu"), n, u, eps, dtype)


def antithetic_times_at(positions: torch.Tensor, n: int, u: float | torch.Tensor, eps: float = 1e-3,
                        dtype=torch.float64) -> torch.Tensor:
    """The antithetic times of the given `positions` (ints in [0, n)) of a batch of n, on their device: what
    `antithetic_times(n, u, eps)[positions]` holds, without materialising the other n − len(positions)."""
    if n <= 0:
        raise ValueError(f"antithetic times need a batch of at least one example, got n = {n}")
    if isinstance(u, torch.Tensor):
        u = u.to(dtype)
    return torch.remainder((u + positions.to(dtype)) / n, 1.0) * (1 - eps) + eps
