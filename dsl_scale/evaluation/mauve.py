"""MAUVE (mauve-text) on precomputed features, with docs/method.md §6's parameters pinned and reported."""

from __future__ import annotations

from typing import Any

import numpy as np

# docs/method.md §6. `num_buckets` is n/10 (at least 2), n the smaller side; everything else is fixed.
PROTOCOL: dict[str, Any] = {
    "num_buckets": "n/10",
    "pca_max_data": -1,
    "kmeans_explained_var": 0.9,
    "kmeans_num_redo": 5,
    "kmeans_max_iter": 500,
    "mauve_scaling_factor": 5,
    "divergence_curve_discretization_size": 25,
    "seed": 25,
}


def num_buckets(n_p: int, n_q: int) -> int:
    return max(2, int(round(min(n_p, n_q) / 10)))


def mauve_score(p_features: np.ndarray, q_features: np.ndarray) -> dict[str, Any]:
    """MAUVE of P (samples) against Q (references), with every parameter that produced it."""
    import faiss
    from mauve import compute_mauve

    # faiss' k-means reduces over OpenMP threads; one thread keeps reruns bit-identical.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    buckets = num_buckets(len(p_features), len(q_features))
    params = {k: v for k, v in PROTOCOL.items() if k != "num_buckets"}
    try:
        out = compute_mauve(p_features=np.asarray(p_features), q_features=np.asarray(q_features),
                            num_buckets=buckets, verbose=False, **params)
    finally:
        faiss.omp_set_num_threads(threads)
    return {
        "mauve": float(out.mauve), "frontier_integral": float(out.frontier_integral),
        "mauve_star": float(out.mauve_star), "n_p": len(p_features), "n_q": len(q_features),
        "parameters": {**PROTOCOL, "num_buckets_used": buckets},
    }
