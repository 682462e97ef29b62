"""Bootstrap 95 % intervals: resample the evaluated texts (and, for two-sample metrics, the references)
with replacement and recompute the metric. Seeded, so reruns agree.

- Means of per-text values (NLL per token, repair fractions): the 2.5 / 97.5 percentiles of the resampled
  means (a mean is unbiased under resampling).
- Two-sample distances (MAUVE, Fréchet): the normal interval, value ± 1.96 · the bootstrap standard
  deviation. A resampled set holds duplicates, which moves a distance between distributions away from the
  full-set value (on two draws of one distribution, the Fréchet distance of resampled sets is about twice
  the full-set one), so percentile intervals there can miss the estimate itself; only the spread is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

LEVEL = 0.95


def percentile_interval(draws: list[float] | np.ndarray, level: float = LEVEL) -> list[float]:
    draws = np.asarray(draws, dtype=np.float64)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))]


def bootstrap_mean(values: list[float] | np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean of per-item values with its bootstrap interval (items resampled)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    if resamples < 1:
        return {"mean": float(values.mean()), "ci95": None, "resamples": 0, "seed": seed}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    return {"mean": float(values.mean()), "ci95": percentile_interval(values[picks].mean(axis=1)),
            "resamples": resamples, "seed": seed}


def bootstrap_two_sample(metric: Callable[[np.ndarray, np.ndarray], float], n_p: int, n_q: int,
                         resamples: int, seed: int = 0, value: float | None = None) -> dict[str, Any]:
    """`metric(p_indices, q_indices)` on the full sets (unless `value` is given) and on `resamples`
    resamplings of both sides (independently, with replacement); the normal interval around the value."""
    value = float(metric(np.arange(n_p), np.arange(n_q))) if value is None else float(value)
    if resamples < 1:
        return {"value": value, "ci95": None, "resamples": 0, "seed": seed, "interval": "none"}
    rng = np.random.default_rng(seed)
    draws = [float(metric(rng.integers(0, n_p, n_p), rng.integers(0, n_q, n_q))) for _ in range(resamples)]
    spread = 1.96 * float(np.std(draws, ddof=1)) if resamples > 1 else 0.0
    return {"value": value, "ci95": [value - spread, value + spread], "resamples": resamples, "seed": seed,
            "interval": "normal: value ± 1.96 · bootstrap sd"}
