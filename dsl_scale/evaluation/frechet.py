"""Fréchet distance between Gaussian fits of two feature sets (FID's formula, on our MAUVE features):
‖μ_p − μ_q‖² + tr(Σ_p + Σ_q − 2 (Σ_p Σ_q)^½), in fp64. tr (Σ_p Σ_q)^½ is computed from the eigenvalues
of the symmetric PSD matrix Σ_p^½ Σ_q Σ_p^½ (same spectrum as Σ_p Σ_q), so no non-symmetric sqrtm."""

from __future__ import annotations

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Features [n_p, d] and [n_q, d] (each n ≥ 2); lower is closer, 0 for identical fits."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1] or min(len(p), len(q)) < 2:
        raise ValueError(f"need two [n >= 2, d] feature arrays of equal d, got {p.shape} and {q.shape}")
    mu_p, mu_q = p.mean(axis=0), q.mean(axis=0)
    cov_p, cov_q = np.atleast_2d(np.cov(p, rowvar=False)), np.atleast_2d(np.cov(q, rowvar=False))
    root_p = _sqrt_psd(cov_p)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_p @ cov_q @ root_p), 0, None)).sum()
    return float(np.sum((mu_p - mu_q) ** 2) + np.trace(cov_p) + np.trace(cov_q) - 2 * cross)
