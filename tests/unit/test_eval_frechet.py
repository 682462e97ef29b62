"""Fréchet distance and the bootstrap intervals that go with every two-sample metric."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from dsl_scale.evaluation.bootstrap import bootstrap_mean, bootstrap_two_sample
from dsl_scale.evaluation.frechet import frechet_distance


def scipy_frechet(p: np.ndarray, q: np.ndarray) -> float:
    """The textbook formula with scipy's general sqrtm."""
    cp, cq = np.cov(p, rowvar=False), np.cov(q, rowvar=False)
    root = linalg.sqrtm(cp @ cq).real
    return float(np.sum((p.mean(0) - q.mean(0)) ** 2) + np.trace(cp + cq - 2 * root))


def test_matches_scipy_and_closed_forms():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    q = rng.normal(size=(250, 8)) * 2.0 + 1.5
    assert frechet_distance(p, q) == pytest.approx(scipy_frechet(p, q), rel=1e-8)
    assert abs(frechet_distance(p, p)) < 1e-8
    # Same covariance, means moved by δ: the distance is ‖δ‖².
    assert frechet_distance(p, p + np.arange(8.0)) == pytest.approx(float(np.sum(np.arange(8.0) ** 2)), rel=1e-9)
    # 1-d: x against 3x is (2μ)² + σ² + 9σ² − 2·3σ².
    x = rng.normal(size=(5000, 1))
    assert frechet_distance(x, 3 * x) == pytest.approx(4 * x.mean() ** 2 + 4 * np.var(x, ddof=1), rel=1e-9)
    with pytest.raises(ValueError, match="feature arrays"):
        frechet_distance(p, q[:, :3])


def test_bootstrap_intervals_cover_and_are_seeded():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, size=400)
    stats = bootstrap_mean(values, 500, seed=3)
    lo, hi = stats["ci95"]
    assert lo < 2.0 < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.2)  # ≈ 2·1.96·σ/√n
    assert bootstrap_mean(values, 500, seed=3) == stats
    p, q = rng.normal(size=(120, 4)), rng.normal(size=(120, 4)) + 0.5
    result = bootstrap_two_sample(lambda i, j: frechet_distance(p[i], q[j]), 120, 120, 50, seed=0)
    assert result["ci95"][0] < result["value"] < result["ci95"][1]
    assert result["ci95"][0] > 0.3  # true distance 4 · 0.25 = 1.0, far from 0


def test_mauve_interval_quantises_like_mauve_text():
    from dsl_scale.evaluation.mauve import mauve_score
    from dsl_scale.evaluation.mauve_bootstrap import mauve_interval

    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(80, 16)).astype(np.float32), rng.normal(size=(80, 16)).astype(np.float32)
    same = mauve_interval(p, q, 300, seed=0)
    assert same["value"] == pytest.approx(mauve_score(p, q)["mauve"], abs=1e-12)  # one quantiser, one value
    assert 0 <= same["ci95"][0] < same["value"] <= same["ci95"][1] <= 1
    apart = mauve_interval(p, q + 3.0, 300, seed=0)
    assert apart["value"] == pytest.approx(mauve_score(p, q + 3.0)["mauve"], abs=1e-12)
    assert apart["ci95"][1] < same["ci95"][0]


def test_no_resamples_means_no_interval():
    assert bootstrap_mean([1.0, 2.0], 0)["ci95"] is None
    assert bootstrap_two_sample(lambda i, j: 1.0, 3, 3, 0)["ci95"] is None
