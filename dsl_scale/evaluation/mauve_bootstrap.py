"""A bootstrap interval for MAUVE that does not rerun k-means per resample.

The features are quantised once, exactly as mauve-text does it with our pinned protocol (mauve.PROTOCOL:
L2-normalise P ∪ Q, PCA to 90 % explained variance, faiss k-means with 5 redos × 500 iterations, seeds from
the protocol's seed), and each resample redraws the texts of both sides with replacement and recomputes
MAUVE from their bucket histograms with mauve-text's own divergence-curve functions. The interval is
conditional on that quantisation (the usual approximation; rerunning k-means per resample costs seconds
each and adds the quantiser's own noise). Interval: value ± 1.96 · bootstrap sd (see bootstrap.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsl_scale.evaluation.mauve import PROTOCOL, num_buckets


def quantize(p_features: np.ndarray, q_features: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(P's bucket labels, Q's bucket labels, bucket count) with mauve-text's quantiser and our protocol."""
    import faiss
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    buckets = num_buckets(len(p_features), len(q_features))
    seed = PROTOCOL["seed"]
    data = normalize(np.vstack([q_features, p_features]), norm="l2", axis=1)  # mauve stacks Q first
    pca = PCA(n_components=None, whiten=False, random_state=seed + 1).fit(data)
    keep = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= PROTOCOL["kmeans_explained_var"])) + 1
    reduced = pca.transform(data)[:, :keep].astype(np.float32)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as in mauve.mauve_score: bit-identical reruns
    try:
        kmeans = faiss.Kmeans(reduced.shape[1], buckets, niter=PROTOCOL["kmeans_max_iter"], verbose=False,
                              nredo=PROTOCOL["kmeans_num_redo"], update_index=True, seed=seed + 2)
        kmeans.train(reduced)
        _, labels = kmeans.index.search(reduced, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    labels = labels.reshape(-1)
    return labels[len(q_features):], labels[:len(q_features)], buckets


def mauve_from_labels(p_labels: np.ndarray, q_labels: np.ndarray, buckets: int) -> float:
    from mauve.compute_mauve import get_divergence_curve_for_multinomials
    from sklearn.metrics import auc

    p = np.bincount(p_labels, minlength=buckets) / len(p_labels)
    q = np.bincount(q_labels, minlength=buckets) / len(q_labels)
    weights = np.linspace(1e-6, 1 - 1e-6, PROTOCOL["divergence_curve_discretization_size"])
    x, y = get_divergence_curve_for_multinomials(p, q, weights, PROTOCOL["mauve_scaling_factor"]).T
    by_x, by_y = np.argsort(x), np.argsort(y)
    return float(0.5 * (auc(x[by_x], y[by_x]) + auc(y[by_y], x[by_y])))


def mauve_interval(p_features: np.ndarray, q_features: np.ndarray, resamples: int, seed: int = 0) -> dict[str, Any]:
    """{"value": MAUVE from the one quantisation, "ci95", "resamples", "seed", "interval"}."""
    from dsl_scale.evaluation.bootstrap import bootstrap_two_sample

    p_labels, q_labels, buckets = quantize(p_features, q_features)
    result = bootstrap_two_sample(lambda i, j: mauve_from_labels(p_labels[i], q_labels[j], buckets),
                                  len(p_labels), len(q_labels), resamples, seed)
    if result["ci95"] is not None:
        result["ci95"] = [max(0.0, result["ci95"][0]), min(1.0, result["ci95"][1])]  # MAUVE lies in [0, 1]
        result["interval"] += " (clipped to [0, 1]), texts resampled within one k-means quantisation"
    return result
