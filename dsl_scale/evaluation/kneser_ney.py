"""A count-based n-gram scorer with interpolated Kneser–Ney smoothing: an independent judge beside the AR model
(no network, no training run; fitted on the training split's blocks).

Each sequence is padded on the left with order − 2 more copies of its first id (the BOS), so every predicted id
(all but the first) has a full context of order − 1 ids. With the context h of k ids (k = order − 1 at the top):

    P_k(w | h) = max(c_k(h, w) − D_k, 0) / c_k(h) + D_k · N1+(h •) / c_k(h) · P_{k−1}(w | h without its first id)

where c_k is the raw count at the top order and the continuation count N1+(• h w) (the number of distinct ids
seen before h w) below it, c_k(h) = Σ_w c_k(h, w), N1+(h •) the number of distinct w with c_k(h, w) > 0, and a
context never seen (c_k(h) = 0) backs off to P_{k−1} entirely. The bottom, P_0(w) = max(N1+(• w) − D_0, 0) / N1+(• •)
+ D_0 · (types) / N1+(• •) / V, interpolates with the uniform over the V predictable ids ([MASK] excluded).
Discounts D_k = n1 / (n1 + 2·n2) from order k's count-of-counts (Ney's estimate), unless given.

`KneserNeyScorer` is a gen_ppl Scorer (scorers.py): its "logits" are log P, so gen-PPL's code (cut at the first
EOS, chunks, bootstrap over samples) scores with it unchanged.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsl_scale.core.device import CPU
from dsl_scale.core.files import atomic_open
from dsl_scale.tokenizer import Tokenizer


class KneserNey:
    def __init__(self, order: int, vocab_size: int, excluded: tuple[int, ...] = (),
                 discounts: list[float] | None = None):
        if order < 1:
            raise ValueError(f"Kneser–Ney order must be >= 1, got {order}")
        self.order, self.vocab_size = order, vocab_size
        self.allowed = np.ones(vocab_size, dtype=bool)
        self.allowed[list(excluded)] = False
        self.fixed_discounts = discounts
        # counts[k][context of k ids][w] = c_k(h, w)
        self.counts: list[dict[tuple[int, ...], dict[int, int]]] = [defaultdict(dict) for _ in range(order)]
        self.discounts: list[float] = []
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def pad(self, sequence: list[int]) -> list[int]:
        return [sequence[0]] * max(0, self.order - 2) + list(sequence) if sequence else []

    def fit(self, sequences: Iterable[list[int]]) -> KneserNey:
        top = self.order - 1
        grams: set[tuple[int, ...]] = set()
        for seq in sequences:
            padded = self.pad(seq)
            first = len(padded) - len(seq) + 1  # the first predicted position
            for i in range(first, len(padded)):
                h, w = tuple(padded[i - top:i]), padded[i]
                row = self.counts[top][h]
                row[w] = row.get(w, 0) + 1
                grams.add(h + (w,))
        # continuation counts: c_k(h, w) = number of distinct ids u with (u, h, w) a gram of order k + 2
        for k in range(top - 1, -1, -1):
            lower: set[tuple[int, ...]] = set()
            for gram in grams:
                suffix = gram[1:]
                row = self.counts[k][suffix[:-1]]
                row[suffix[-1]] = row.get(suffix[-1], 0) + 1
                lower.add(suffix)
            grams = lower
        self.discounts = self.fixed_discounts or [self._ney_discount(k) for k in range(self.order)]
        self.counts = [dict(c) for c in self.counts]
        return self

    def _ney_discount(self, k: int) -> float:
        values = [c for row in self.counts[k].values() for c in row.values()]
        n1, n2 = values.count(1), values.count(2)
        return n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 and n1 > 0 else 0.5

    def distribution(self, context: list[int] | tuple[int, ...]) -> np.ndarray:
        """P(· | the last order − 1 ids of context) [vocab_size] fp64 (0 at excluded ids)."""
        h = tuple(context[len(context) - (self.order - 1):]) if self.order > 1 else ()
        return self._dist(h)

    def _dist(self, h: tuple[int, ...]) -> np.ndarray:
        if h in self._cache:
            return self._cache[h]
        k = len(h)
        lower = (self.allowed / self.allowed.sum()) if k == 0 else self._dist(h[1:])
        row = self.counts[k].get(h)
        if not row:  # a context never seen (at k = 0: no counts at all) backs off entirely
            out = lower
        else:
            total = sum(row.values())
            d = self.discounts[k]
            ids = np.fromiter(row.keys(), dtype=np.int64)
            vals = np.fromiter(row.values(), dtype=np.float64)
            out = d * len(row) / total * lower
            out[ids] += np.maximum(vals - d, 0.0) / total
        self._cache[h] = out
        return out

    def identity(self) -> dict[str, Any]:
        return {"kind": "kneser-ney", "order": self.order, "discounts": self.discounts,
                "contexts": [len(c) for c in self.counts]}


class KneserNeyScorer:
    """A fitted KneserNey as a gen_ppl Scorer: logits(ids) = log P(next | prefix) at every position."""

    def __init__(self, model: KneserNey, tokenizer: Tokenizer, context: int, source: str):
        self.model, self.tokenizer, self.context, self.source = model, tokenizer, context, source
        self.bos_id, self.eos_id, self.same_vocab, self.device = tokenizer.bos_id, tokenizer.eos_id, True, CPU

    def identity(self) -> dict[str, Any]:
        return {**self.model.identity(), "fitted_on": self.source, "context": self.context}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = np.full((*ids.shape, self.model.vocab_size), -1e30)
        for b, (row, m) in enumerate(zip(ids.tolist(), mask.tolist())):
            padded = self.model.pad(row[: sum(m)])
            shift = len(padded) - sum(m)
            for i in range(sum(m)):
                with np.errstate(divide="ignore"):
                    out[b, i] = np.log(self.model.distribution(padded[: shift + i + 1]))
        return torch.tensor(np.maximum(out, -1e30), dtype=torch.float64, device=CPU)


def fit_on_split(shard_dir: str, split: str, order: int, tokenizer: Tokenizer, cache_dir: str = "") -> KneserNey:
    """KneserNey of `order` fitted on every block of the split; cached under cache_dir by (manifest, order)."""
    from dsl_scale.data.loader import open_shards

    manifest = (Path(shard_dir) / "manifest.json").read_bytes()
    key = hashlib.sha256(manifest + f"|{split}|{order}".encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() / f"kneser_ney_{key}.pkl" if cache_dir else None
    if cache is not None and cache.is_file():
        return pickle.loads(cache.read_bytes())
    blocks = open_shards(shard_dir, split)
    model = KneserNey(order, tokenizer.vocab_size, excluded=(tokenizer.mask_id,))
    model.fit(np.asarray(blocks[i]).tolist() for i in range(len(blocks)))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cache, "wb") as f:
            f.write(pickle.dumps(model))
    return model


def perplexity_of(model: KneserNey, sequence: list[int]) -> float:
    """exp(mean −log P) of every id after the first (for tests and quick checks)."""
    padded = model.pad(sequence)
    shift = len(padded) - len(sequence)
    nll = [-math.log(model.distribution(padded[: shift + i])[sequence[i]]) for i in range(1, len(sequence))]
    return math.exp(sum(nll) / len(nll))
