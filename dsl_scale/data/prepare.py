"""Raw text -> packed train/val shards + manifest.json (the logic behind tools/prepare_data.py)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm import tqdm

from dsl_scale.data.packing import pack_blocks
from dsl_scale.data.sources import iter_documents
from dsl_scale.data.writers import (
    DEFAULT_SHARD_SIZE_BYTES,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    utc_now_iso,
    write_manifest,
    write_split,
)
from dsl_scale.tokenizer import Tokenizer, get_tokenizer

SPLITS = ("train", "val")
_TOKENIZE_CHUNK = 32  # documents per encode_batch call (tiktoken threads within a batch)


def split_documents(docs: Sequence[str], val_fraction: float) -> tuple[Sequence[str], Sequence[str]]:
    """Train = the head, validation = a held-out tail of at least one document; never overlapping."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to hold one out for validation, got {len(docs)}")
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    return docs[: len(docs) - n_val], docs[len(docs) - n_val :]


def prepare(
    source: str,
    out: str,
    seq_len: int,
    val_fraction: float = 0.05,
    shard_size_bytes: int = DEFAULT_SHARD_SIZE_BYTES,
    tokenizer: str = "gpt2",
    fmt: str = "mds",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenise, pack and shard `source` into `out`; return the manifest (also in out/manifest.json)."""
    start = time.perf_counter()
    tok = get_tokenizer(tokenizer)
    _clear_output(out, overwrite)
    # The val split is a tail, so the document count must be known first. Holding the raw text in
    # memory is fine for the bundled sources; OpenWebText-scale sources will want a counting pass.
    docs = list(tqdm(iter_documents(source), desc=f"read {source}", unit="doc", disable=not progress))
    train_docs, val_docs = split_documents(docs, val_fraction)

    splits: dict[str, dict[str, int]] = {}
    for split, split_docs in zip(SPLITS, (train_docs, val_docs), strict=True):
        stats = {"documents": len(split_docs), "tokens": 0, "blocks": 0}
        token_docs = _tokenize(tok, split_docs, stats, desc=f"tokenize {split}", progress=progress)
        blocks = pack_blocks(token_docs, seq_len, tok.bos_id, tok.eos_id)
        stats["blocks"] = write_split(blocks, out, split, seq_len, fmt, shard_size_bytes)
        if stats["blocks"] == 0:
            raise ValueError(
                f"{split} split of {source!r} has {stats['tokens']} tokens, not enough for one block of "
                f"seq_len {seq_len}; use a smaller --seq-len, a larger --val-fraction or more text"
            )
        splits[split] = stats

    manifest = {
        "format": fmt,
        "source": source,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "seq_len": seq_len,
        "val_fraction": val_fraction,
        "splits": splits,
        "created": utc_now_iso(),
        "version": MANIFEST_VERSION,
        "elapsed_s": round(time.perf_counter() - start, 3),
    }
    write_manifest(out, manifest)  # last: a manifest only ever points at complete shards
    return manifest


def _tokenize(
    tok: Tokenizer, docs: Sequence[str], stats: dict[str, int], desc: str, progress: bool
) -> Iterator[list[int]]:
    """Token ids per document; `stats["tokens"]` counts them, each document's EOS included."""
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=not progress) as bar:
        for i in range(0, len(docs), _TOKENIZE_CHUNK):
            for ids in tok.encode_batch(docs[i : i + _TOKENIZE_CHUNK]):
                stats["tokens"] += len(ids) + 1
                yield ids
            bar.update(min(_TOKENIZE_CHUNK, len(docs) - i))


def _clear_output(out: str, overwrite: bool) -> None:
    """Refuse to mix runs in one directory unless asked; then remove the manifest before any shard."""
    ours = [os.path.join(out, name) for name in (MANIFEST_NAME, *SPLITS)]
    existing = [p for p in ours if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds prepared data ({', '.join(existing)}); pass --overwrite")
    for path in existing:  # manifest.json comes first in `ours`, so it is gone before the shards
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(out, exist_ok=True)


def format_summary(manifest: dict[str, Any], out: str) -> str:
    m = manifest
    lines = [f"wrote {m['format']} shards to {out} (seq_len {m['seq_len']}, tokenizer {m['tokenizer']})"]
    for split, s in m["splits"].items():
        lines.append(
            f"  {split:5s}: {s['documents']:>8,} documents {s['tokens']:>12,} tokens {s['blocks']:>9,} blocks"
        )
    lines.append(f"  elapsed: {m['elapsed_s']:.1f} s")
    return "\n".join(lines)
