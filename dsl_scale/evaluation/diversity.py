"""Unigram entropy (docs/method.md §6) and distinct-n of sampled token sequences."""

from __future__ import annotations

import math
from collections import Counter


def unigram_entropy(tokens: list[int]) -> float:
    """−Σ p log p (nats) of the token frequencies within one sample."""
    counts = Counter(tokens)
    n = len(tokens)
    return -sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0


def distinct_n(samples: list[list[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of all samples (n-grams never cross a sample boundary)."""
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(samples: list[list[int]], resamples: int = 0, seed: int = 0) -> dict:
    """Mean per-sample unigram entropy over every token of each sample, and distinct-1..4. With `resamples`,
    distinct-n's normal bootstrap interval (samples resampled: duplicates lower distinct-n, so only the spread
    is used, as for the two-sample distances in bootstrap.py)."""
    import numpy as np

    result: dict = {"entropy": sum(unigram_entropy(s) for s in samples) / len(samples), "count": len(samples)}
    result.update({f"distinct_{n}": distinct_n(samples, n) for n in range(1, 5)})
    if resamples > 1:
        rng = np.random.default_rng(seed)
        picks = [rng.integers(0, len(samples), len(samples)) for _ in range(resamples)]
        result["ci95"] = {}
        for n in range(1, 5):
            value = result[f"distinct_{n}"]
            # each n-gram as one int (its tuple's hash: equal grams, equal codes), so a resample is one np.unique
            codes = [np.array([hash(tuple(s[i:i + n])) for i in range(len(s) - n + 1)], dtype=np.int64)
                     for s in samples]
            draws = []
            for pick in picks:
                grams = np.concatenate([codes[i] for i in pick])
                draws.append(len(np.unique(grams)) / len(grams) if len(grams) else 0.0)
            spread = 1.96 * float(np.std(draws, ddof=1))
            result["ci95"][f"distinct_{n}"] = [max(0.0, value - spread), min(1.0, value + spread)]
        result["bootstrap"] = {"resamples": resamples, "seed": seed, "interval": "normal: value ± 1.96 · bootstrap sd"}
    return result
