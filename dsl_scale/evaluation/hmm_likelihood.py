"""Exact log-likelihood of token sequences under the `synthetic-hmm` source: the forward algorithm in log
space, batched, fp64. Sample quality on that testbed = per-token NLL under the source (lower is better; the
source's own samples score its entropy rate), reported beside the samples' entropy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dsl_scale.data.synthetic_hmm import HMM, hmm_from_source
from dsl_scale.evaluation.bootstrap import bootstrap_mean


def log_likelihood(hmm: HMM, symbols: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) [b] (fp64) of symbol sequences [b, n]. With `observed` [b, n] bool, unobserved positions are
    marginalised (their emission factor is 1). A sequence the HMM cannot emit scores −inf."""
    device = symbols.device
    log_init = torch.as_tensor(hmm.initial, dtype=torch.float64, device=device).log()
    log_trans = torch.as_tensor(hmm.transitions, dtype=torch.float64, device=device).log()
    log_emit_t = torch.as_tensor(hmm.emissions.T, dtype=torch.float64, device=device).log()  # [V, S]
    emit = log_emit_t[symbols]  # [b, n, S]
    if observed is not None:
        emit = emit.masked_fill(~observed[..., None], 0.0)
    log_alpha = log_init + emit[:, 0]
    for t in range(1, symbols.shape[1]):
        log_alpha = torch.logsumexp(log_alpha[:, :, None] + log_trans, dim=1) + emit[:, t]
    return torch.logsumexp(log_alpha, dim=1)


def strip_frame(tokens: list[int], bos_id: int, eos_id: int) -> list[int]:
    """A block's symbols: one leading BOS and one trailing EOS dropped."""
    start = 1 if tokens[:1] == [bos_id] else 0
    end = len(tokens) - 1 if len(tokens) > start and tokens[-1] == eos_id else len(tokens)
    return tokens[start:end]


def sequence_log_likelihood(hmm: HMM, sequences: list[list[int]], batch_size: int = 512) -> np.ndarray:
    """log p(x) per sequence (any ids < the emission table's width), batched by length."""
    out = np.empty(len(sequences))
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        by_length.setdefault(len(s), []).append(i)
    for _, rows in by_length.items():
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            ids = torch.tensor([sequences[i] for i in idx], dtype=torch.long, device="cpu")
            out[idx] = log_likelihood(hmm, ids).numpy()
    return out


def per_token_nll(hmm: HMM, sequences: list[list[int]], batch_size: int = 256) -> np.ndarray:
    """−log p(x) / len(x) per sequence (symbol ids only); sequences of one length are batched."""
    return -sequence_log_likelihood(hmm, sequences, batch_size) / np.array([len(s) for s in sequences], dtype=float)


def hmm_quality(source: str, samples: list[list[int]], bos_id: int, eos_id: int, resamples: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """Per-token NLL of each sample's symbols under the source, its mean with a bootstrap interval.

    A sample holding any id that is not a symbol (BOS/EOS/[MASK] inside the frame) has probability 0: it is
    counted in `invalid` and left out of the mean (so read `invalid` beside it); an empty sample too. With no valid
    sample the mean is None."""
    hmm = hmm_from_source(source)
    symbols = [strip_frame(s, bos_id, eos_id) for s in samples]
    valid = [i for i, s in enumerate(symbols) if s and all(0 <= t < hmm.symbols for t in s)]
    if not valid:  # nothing to average: eps_nll (hmm_marginals.py) still scores every sample
        return {"source": source, "nll_per_token": None, "ci95": None, "count": len(samples), "scored": 0,
                "invalid": len(samples), "impossible": 0}
    nll = per_token_nll(hmm, [symbols[i] for i in valid])
    finite = np.isfinite(nll)
    lengths = [len(symbols[i]) for i in valid]
    lower, upper = hmm.entropy_bounds(max(lengths))
    stats = bootstrap_mean(nll[finite], resamples, seed) if finite.any() else {"mean": float("inf"), "ci95": None}
    return {"source": source, "nll_per_token": stats["mean"], "ci95": stats["ci95"],
            "count": len(samples), "scored": int(finite.sum()),
            "invalid": len(samples) - len(valid), "impossible": int((~finite).sum()),
            "symbols_per_sample": {"min": min(lengths), "max": max(lengths)},
            "source_entropy_bounds": {"lower": lower, "upper": upper,
                                      "meaning": "per symbol: H(X|S) <= H(X) <= H(S) + H(X|S), exact"},
            "bootstrap": {k: stats.get(k) for k in ("resamples", "seed")}}
