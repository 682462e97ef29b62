"""Distributional instruments on the synthetic-hmm testbed, exact where the source allows:

- `ngram_tv`: the total-variation distance between the samples' pooled n-gram frequencies (n = 2, 3: every
  window of n consecutive symbols of every sample) and the source's exact pooled n-gram marginal, Σ over the
  window starts t of P(x_t … x_{t+n−1}) / (m − n + 1) for m symbols, from the forward recursion (state marginals
  π_t = π_0·Tᵗ, summed over t first since the marginal is linear in π_t). A window holding an id that is not a
  symbol is mass where the source has none. Its finite-sample floor is the same figure for as many of the
  source's own sequences (the sanity row "held-out real").
- `smoothed_hmm` / `eps_nll`: per-symbol NLL under the source mixed with ε of uniform noise (transitions
  (1 − ε)T + ε/S, emissions (1 − ε)E + ε/V over every id of the tokenizer), so a sample the source cannot emit
  (a non-symbol id, an impossible transition) scores a finite, large value and is counted, not dropped.
- `in_sampler_self_correction`: of the tokens a sampler remasked (samples.jsonl's `remasks`), the fraction whose
  final replacement raises the sequence's likelihood (under the ε-smoothed source) over putting the remasked
  token back; unchanged replacements count as not raising it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsl_scale.data.synthetic_hmm import HMM
from dsl_scale.evaluation.bootstrap import bootstrap_mean
from dsl_scale.evaluation.hmm_likelihood import sequence_log_likelihood, strip_frame

EPS = 1e-3


def pooled_ngram_marginal(hmm: HMM, length: int, n: int) -> np.ndarray:
    """The source's exact pooled n-gram marginal [V]*n (n ∈ {1, 2, 3}) over sequences of `length` symbols."""
    if not 1 <= n <= 3 or length < n:
        raise ValueError(f"pooled n-gram marginals for n in 1..3 and length >= n, got n={n}, length={length}")
    pi, pooled = hmm.initial.astype(np.float64), np.zeros(hmm.states)
    for _ in range(length - n + 1):
        pooled += pi
        pi = pi @ hmm.transitions
    pooled /= length - n + 1
    e, t = hmm.emissions, hmm.transitions
    if n == 1:
        return pooled @ e
    first = (pooled[:, None] * e).T @ t  # [V, S]: Σ_s Π(s) E(s, a) T(s, s')
    if n == 2:
        return first @ e
    return np.einsum("as,sb,sc->abc", first, e, t @ e)


def ngram_codes(sequence: list[int], n: int, symbols: int) -> np.ndarray:
    """Each window of n ids as one code in [0, symbols**n], the last code for a window holding a non-symbol."""
    ids = np.asarray(sequence, dtype=np.int64)
    if len(ids) < n:
        return np.zeros(0, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    valid = ((windows >= 0) & (windows < symbols)).all(axis=1)
    codes = (windows * symbols ** np.arange(n - 1, -1, -1)).sum(axis=1)
    return np.where(valid, codes, symbols ** n)


def tv_distance(counts: np.ndarray, marginal: np.ndarray) -> float:
    """½ Σ_g |f̂(g) − p(g)| with f̂ the normalised counts over the codes of `ngram_codes` (the last bin, grams
    holding a non-symbol, has p = 0)."""
    p = np.append(marginal.reshape(-1), 0.0)
    return 0.5 * float(np.abs(counts / counts.sum() - p).sum())


def ngram_tv(hmm: HMM, samples: list[list[int]], bos_id: int, eos_id: int, orders: tuple[int, ...] = (2, 3),
             resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """TV distance per n-gram order between the samples' pooled n-grams and the source's exact marginal; with
    `resamples`, a normal bootstrap interval (samples resampled; a resampled set's duplicates move the distance,
    so only the spread is used, as for the other two-sample distances in bootstrap.py)."""
    from scipy import sparse

    symbols = [strip_frame(s, bos_id, eos_id) for s in samples]
    length = max(len(s) for s in symbols)
    out: dict[str, Any] = {"count": len(samples), "symbols_per_sample": length}
    rng = np.random.default_rng(seed)
    weights = [np.bincount(rng.integers(0, len(symbols), len(symbols)), minlength=len(symbols))
               for _ in range(resamples)]
    for n in orders:
        marginal = pooled_ngram_marginal(hmm, length, n)
        bins = hmm.symbols ** n + 1
        row, col, val = [], [], []
        for i, s in enumerate(symbols):
            codes, counts = np.unique(ngram_codes(s, n, hmm.symbols), return_counts=True)
            row += [i] * len(codes)
            col += codes.tolist()
            val += counts.tolist()
        per_sample = sparse.csr_matrix((np.asarray(val, dtype=np.float64), (row, col)), shape=(len(symbols), bins))
        value = tv_distance(np.asarray(per_sample.sum(axis=0)).ravel(), marginal)
        entry: dict[str, Any] = {"tv": value, "ci95": None}
        if resamples > 1:
            draws = [tv_distance(per_sample.T @ w.astype(np.float64), marginal) for w in weights]
            spread = 1.96 * float(np.std(draws, ddof=1))
            entry.update(ci95=[max(0.0, value - spread), value + spread], resamples=resamples, seed=seed,
                         interval="normal: value ± 1.96 · bootstrap sd")
        out[f"tv_{n}"] = entry
    return out


def smoothed_hmm(hmm: HMM, vocab_size: int, eps: float = EPS) -> HMM:
    """The source mixed with ε of uniform noise: transitions over the S states, emissions over all `vocab_size`
    ids (symbols first, then the tokenizer's specials, which the source never emits)."""
    if not 0 < eps < 1 or vocab_size < hmm.symbols:
        raise ValueError(f"need 0 < eps={eps} < 1 and vocab_size={vocab_size} >= the source's {hmm.symbols} symbols")
    emissions = np.zeros((hmm.states, vocab_size))
    emissions[:, :hmm.symbols] = hmm.emissions
    return HMM(hmm.initial, (1 - eps) * hmm.transitions + eps / hmm.states,
               (1 - eps) * emissions + eps / vocab_size, hmm.seed)


def eps_nll(hmm: HMM, samples: list[list[int]], bos_id: int, eos_id: int, vocab_size: int, eps: float = EPS,
            resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """Mean per-symbol NLL of every sample (none dropped) under the ε-smoothed source, with a bootstrap interval."""
    symbols = [strip_frame(s, bos_id, eos_id) for s in samples]
    if any(not s for s in symbols):
        raise ValueError("eps_nll: a sample holds no symbol between its BOS and EOS")
    smooth = smoothed_hmm(hmm, vocab_size, eps)
    nll = -sequence_log_likelihood(smooth, symbols) / np.array([len(s) for s in symbols])
    stats = bootstrap_mean(nll, resamples, seed)
    invalid = sum(not all(0 <= t < hmm.symbols for t in s) for s in symbols)
    return {"eps_nll": stats["mean"], "ci95": stats["ci95"], "eps": eps, "count": len(samples), "invalid": invalid,
            "bootstrap": {k: stats.get(k) for k in ("resamples", "seed")}}


def in_sampler_self_correction(hmm: HMM, samples: list[list[int]], remasks: list[list[list[int]]], bos_id: int,
                               eos_id: int, vocab_size: int, eps: float = EPS) -> dict[str, Any]:
    """Of the realised remasks [step, position, token] of each sample, the fraction whose final token at that
    position gives the sample a higher likelihood (ε-smoothed source) than the remasked token would; remasks of
    the BOS/EOS frame are not judged (counted in `frame`)."""
    smooth = smoothed_hmm(hmm, vocab_size, eps)
    finals, variants, changed, frame = [], [], [], 0
    for tokens, events in zip(samples, remasks):
        start = 1 if tokens[:1] == [bos_id] else 0
        body = strip_frame(tokens, bos_id, eos_id)
        for _, pos, old in events:
            j = pos - start
            if not 0 <= j < len(body):
                frame += 1
                continue
            variant = list(body)
            variant[j] = old
            finals.append(body)
            variants.append(variant)
            changed.append(body[j] != old)
    judged = len(variants)
    result: dict[str, Any] = {"remasks": judged + frame, "judged": judged, "frame": frame, "eps": eps,
                              "changed": int(sum(changed)), "improved": 0, "worsened": 0, "improved_fraction": None}
    if judged:
        gain = sequence_log_likelihood(smooth, finals) - sequence_log_likelihood(smooth, variants)
        result["improved"] = int((gain > 0).sum())
        result["worsened"] = int((gain < 0).sum())
        result["improved_fraction"] = result["improved"] / judged
    return result
