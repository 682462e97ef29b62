"""`synthetic-hmm`: a seeded hidden Markov model as a data source whose likelihood is exact.

The source name carries every parameter, so the HMM can be rebuilt from a config or a manifest alone:
`synthetic-hmm` (the defaults) or with dash-separated overrides, e.g. `synthetic-hmm-states32-symbols16-seed3`.
Keys: `states` (64), `symbols` (64), `succ` (successors per state, 4), `seed` (0), `n` (sequences written
by the shard writer, 65536; the source itself is unlimited: sequence i is a pure function of (seed, i)).

The model: a uniform initial state; each state moves to `succ` distinct successor states (random, with
Dirichlet(1) weights), so consecutive symbols are tightly coupled and decoding many positions at once from
their marginals breaks that coupling; each state emits from a peaked Dirichlet(EMISSION_CONCENTRATION)
distribution over the symbols. A block of length L holds one sequence: `[BOS] + (L − 2) symbols + [EOS]`,
with the symbols as the ids 0 … symbols − 1 of the `synthetic` tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

PREFIX = "synthetic-hmm"
EMISSION_CONCENTRATION = 0.02  # Dirichlet α per symbol: most of a state's mass on one or two symbols
_PARAMETER_STREAM, _SEQUENCE_STREAM = 0, 1
_PART = re.compile(r"([a-z]+)(\d+)")


@dataclass(frozen=True)
class HMMSpec:
    states: int = 64
    symbols: int = 64
    succ: int = 4
    seed: int = 0
    n: int = 65536

    @property
    def source(self) -> str:
        """The source name that rebuilds this spec (defaults left out)."""
        default = HMMSpec()
        parts = [f"{k}{getattr(self, k)}" for k in _KEYS if getattr(self, k) != getattr(default, k)]
        return "-".join([PREFIX, *parts])


_KEYS = ("states", "symbols", "succ", "seed", "n")


def is_synthetic(source: str) -> bool:
    return source == PREFIX or source.startswith(PREFIX + "-")


def parse_source(source: str) -> HMMSpec:
    """`synthetic-hmm[-KEYVALUE…]` → HMMSpec; an unknown key or a bad value is a ValueError naming it."""
    if not is_synthetic(source):
        raise ValueError(f"{source!r} is not a synthetic-hmm source (expected {PREFIX}[-states64-symbols64-…])")
    values: dict[str, int] = {}
    for part in filter(None, source[len(PREFIX):].split("-")):
        match = _PART.fullmatch(part)
        if not match or match[1] not in _KEYS:
            raise ValueError(f"data source {source!r}: {part!r} is not KEYVALUE with a key in {_KEYS} "
                             f"(e.g. {PREFIX}-states32-seed1)")
        values[match[1]] = int(match[2])
    spec = HMMSpec(**values)
    if spec.states < 1 or spec.symbols < 1 or spec.n < 2 or not 1 <= spec.succ <= spec.states:
        raise ValueError(f"data source {source!r}: need states, symbols >= 1, n >= 2 and 1 <= succ <= states")
    return spec


@dataclass(frozen=True)
class HMM:
    """Initial distribution [S], transitions [S, S] (row s: next state given s), emissions [S, V] (fp64)."""

    initial: np.ndarray
    transitions: np.ndarray
    emissions: np.ndarray
    seed: int

    @property
    def states(self) -> int:
        return len(self.initial)

    @property
    def symbols(self) -> int:
        return self.emissions.shape[1]

    def sample(self, indices: Iterable[int], length: int) -> np.ndarray:
        """Symbol sequences [len(indices), length] (int64); sequence i depends only on (seed, i)."""
        indices = list(indices)
        # Two uniforms per position from the sequence's own generator, then inverse-CDF draws vectorised
        # over the batch: the batch a sequence is drawn in cannot change it.
        u = np.stack([np.random.default_rng([self.seed, _SEQUENCE_STREAM, int(i)]).random((2, length))
                      for i in indices]) if indices else np.zeros((0, 2, length))
        cum_init, cum_trans, cum_emit = (np.cumsum(a, axis=-1) for a in (self.initial, self.transitions,
                                                                          self.emissions))
        out = np.empty((len(indices), length), dtype=np.int64)
        state = _inverse_cdf(np.broadcast_to(cum_init, (len(indices), self.states)), u[:, 0, 0])
        for t in range(length):
            if t:
                state = _inverse_cdf(cum_trans[state], u[:, 0, t])
            out[:, t] = _inverse_cdf(cum_emit[state], u[:, 1, t])
        return out

    def entropy_bounds(self, length: int) -> tuple[float, float]:
        """Per-symbol bounds on the entropy of `length` symbols, exact: H(X|S) ≤ H(X) ≤ H(S) + H(X|S),
        with H(X|S) = Σ_t E H(emission | S_t) and H(S) = H(S_1) + Σ_t E H(transition | S_{t−1})."""
        emit_h = -np.sum(self.emissions * _log0(self.emissions), axis=1)
        trans_h = -np.sum(self.transitions * _log0(self.transitions), axis=1)
        marginal = self.initial.copy()
        h_x_given_s, h_s = 0.0, float(-np.sum(marginal * _log0(marginal)))
        for t in range(length):
            if t:
                h_s += float(marginal @ trans_h)
                marginal = marginal @ self.transitions
            h_x_given_s += float(marginal @ emit_h)
        return h_x_given_s / length, (h_x_given_s + h_s) / length


def _log0(p: np.ndarray) -> np.ndarray:
    """log p with log 0 := 0 (so p·log p is 0 there)."""
    return np.log(np.where(p > 0, p, 1.0))


def _inverse_cdf(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise categorical draws from cumulative rows [b, K] and uniforms [b]."""
    return np.minimum((cum < u[:, None] * cum[:, -1:]).sum(axis=1), cum.shape[1] - 1)


def build_hmm(spec: HMMSpec) -> HMM:
    """The HMM of a spec: every parameter is a pure function of (seed, sizes)."""
    rng = np.random.default_rng([spec.seed, _PARAMETER_STREAM])
    transitions = np.zeros((spec.states, spec.states))
    for s in range(spec.states):
        successors = rng.choice(spec.states, size=spec.succ, replace=False)
        transitions[s, successors] = rng.dirichlet(np.ones(spec.succ))
    emissions = rng.dirichlet(np.full(spec.symbols, EMISSION_CONCENTRATION), size=spec.states)
    # Dirichlet draws with tiny α can underflow to exact zeros; keep every row a distribution.
    emissions = np.maximum(emissions, 1e-300)
    emissions /= emissions.sum(axis=1, keepdims=True)
    return HMM(np.full(spec.states, 1.0 / spec.states), transitions, emissions, spec.seed)


def hmm_from_source(source: str) -> HMM:
    return build_hmm(parse_source(source))


def sequence_length(seq_len: int) -> int:
    """Symbols per block: the block's frame is [BOS] … [EOS]."""
    if seq_len < 3:
        raise ValueError(f"seq_len must be at least 3 (BOS + 1 symbol + EOS), got {seq_len}")
    return seq_len - 2


def hmm_blocks(source: str, indices: Iterable[int], seq_len: int, bos_id: int, eos_id: int,
               chunk: int = 1024) -> Iterator[np.ndarray]:
    """int32 blocks `[BOS] + symbols + [EOS]` of the sequences `indices`, in order."""
    hmm, n = hmm_from_source(source), sequence_length(seq_len)
    indices = list(indices)
    for start in range(0, len(indices), chunk):
        symbols = hmm.sample(indices[start:start + chunk], n)
        blocks = np.empty((len(symbols), seq_len), dtype=np.int32)
        blocks[:, 0], blocks[:, 1:-1], blocks[:, -1] = bos_id, symbols, eos_id
        yield from blocks
