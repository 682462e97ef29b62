"""Wrap tokenised documents into fixed-length blocks (MDLM's OpenWebText wrapping)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def pack_blocks(
    token_docs: Iterable[list[int]], seq_len: int, bos_id: int, eos_id: int
) -> Iterator[np.ndarray]:
    """Yield int32 blocks `[BOS] + (seq_len - 2) stream tokens + [EOS]`.

    The stream is the documents concatenated, each followed by EOS. A document may span several
    blocks; the final remainder that does not fill a block is dropped.
    """
    if seq_len < 3:
        raise ValueError(f"seq_len must be at least 3 (BOS + 1 token + EOS), got {seq_len}")
    inner = seq_len - 2
    buffer = np.empty(0, dtype=np.int32)
    for doc in token_docs:
        stream = np.asarray(list(doc) + [eos_id], dtype=np.int32)
        buffer = np.concatenate([buffer, stream]) if buffer.size else stream
        n_full = buffer.size // inner
        if n_full == 0:
            continue
        chunks = buffer[: n_full * inner].reshape(n_full, inner)
        for chunk in chunks:
            block = np.empty(seq_len, dtype=np.int32)
            block[0], block[1:-1], block[-1] = bos_id, chunk, eos_id
            yield block
        buffer = buffer[n_full * inner :].copy()
