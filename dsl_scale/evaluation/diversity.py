"""Unigram entropy (SPEC §6) and distinct-n of sampled token sequences."""

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


def diversity(samples: list[list[int]]) -> dict[str, float]:
    """Mean per-sample unigram entropy over every token of each sample, and distinct-1..4."""
    result = {"entropy": sum(unigram_entropy(s) for s in samples) / len(samples), "count": len(samples)}
    result.update({f"distinct_{n}": distinct_n(samples, n) for n in range(1, 5)})
    return result
