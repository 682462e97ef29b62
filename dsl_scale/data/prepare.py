"""Raw text -> packed train/val shards + manifest.json (the logic behind tools/prepare_data.py).

Each split's documents are cut into groups of `docs_per_group` consecutive documents. A group is
tokenised, packed and written on its own (`<out>/<split>/gNNNNN/`), so groups run in parallel worker
processes and a rerun skips groups that finished: a finished group has `done.json` (its documents'
fingerprint, block count and shards with sha256), written last and atomically. A group's final partial
block is dropped, as is the final one of a split. After the groups, the MDS indices are merged into
`<out>/<split>/index.json` and manifest.json lists every shard of every format in block order.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm import tqdm

from dsl_scale.data.packing import pack_blocks
from dsl_scale.data.sources import Skipped, iter_documents
from dsl_scale.data.synthetic_hmm import HMMSpec, hmm_blocks, is_synthetic, parse_source, sequence_length
from dsl_scale.data.writers import (
    DEFAULT_SHARD_SIZE_BYTES,
    FORMATS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    import_writer_libraries,
    utc_now_iso,
    write_group,
    write_json_atomic,
    write_manifest,
)
from dsl_scale.tokenizer import Tokenizer, get_tokenizer

SPLITS = ("train", "val")
DEFAULT_DOCS_PER_GROUP = 4096
STATE_NAME = "prepare.json"  # settings of an unfinished preparation, for resuming it
DONE_NAME = "done.json"
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
    workers: int = 1,
    docs_per_group: int = DEFAULT_DOCS_PER_GROUP,
    skip_bad_files: bool = False,
) -> dict[str, Any]:
    """Tokenise, pack and shard `source` into `out`; return the manifest (also in out/manifest.json).
    `skip_bad_files`: leave out source files that are not UTF-8 text (named in the manifest) instead of failing.

    Rerunning after an interruption with the same arguments resumes: finished groups are kept.
    """
    start = time.perf_counter()
    if fmt not in FORMATS:
        raise ValueError(f"unknown shard format {fmt!r}; choices: {', '.join(sorted(FORMATS))}")
    if workers < 1 or docs_per_group < 1 or shard_size_bytes < 1:
        raise ValueError(f"need workers, docs_per_group and shard_size_bytes >= 1, got "
                         f"{workers}, {docs_per_group}, {shard_size_bytes}")
    tok = get_tokenizer(tokenizer)
    synthetic = _check_synthetic(source, tok, seq_len) if is_synthetic(source) else None
    settings = {"source": source, "seq_len": seq_len, "val_fraction": val_fraction, "tokenizer": tok.name,
                "format": fmt, "shard_size_bytes": shard_size_bytes, "docs_per_group": docs_per_group}
    _claim_output(out, settings, overwrite)
    import_writer_libraries(fmt)
    skipped = Skipped()
    if synthetic is not None:  # token blocks, one generated sequence each: the "documents" are sequence indices
        docs: Sequence[str] | range = range(synthetic.n)
    else:
        # The val split is a tail, so the document count must be known first. Holding the raw text in
        # memory is fine up to a few GB; larger corpora want a counting pass.
        docs = list(tqdm(iter_documents(source, skip_bad_files, skipped), desc=f"read {source}", unit="doc",
                         disable=not progress))
    train_docs, val_docs = split_documents(docs, val_fraction)

    splits: dict[str, dict[str, int]] = {}
    shards: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in FORMATS[fmt]}
    built = 0
    for split, split_docs in zip(SPLITS, (train_docs, val_docs), strict=True):
        results, n_built = _run_groups(split_docs, out, split, settings, workers, progress)
        built += n_built
        stats = {"documents": len(split_docs), "tokens": sum(r["tokens"] for r in results),
                 "blocks": sum(r["blocks"] for r in results), "groups": len(results)}
        if stats["blocks"] == 0:
            raise ValueError(
                f"{split} split of {source!r} has {stats['tokens']} tokens, not enough for one block of "
                f"seq_len {seq_len}; use a smaller --seq-len, a larger --val-fraction or more text"
            )
        splits[split] = stats
        for name in shards:
            shards[name][split] = [{**s, "file": f"{split}/{r['group']}/{s['file']}"}
                                   for r in results for s in r["shards"][name]]
        if "mds" in shards:
            _merge_mds_index(out, split, results)

    manifest = {
        "format": fmt, "source": source, "tokenizer": tok.name, "vocab_size": tok.vocab_size,
        "seq_len": seq_len, "val_fraction": val_fraction, "docs_per_group": docs_per_group,
        "shard_size_bytes": shard_size_bytes, "splits": splits, "shards": shards,
        "created": utc_now_iso(), "version": MANIFEST_VERSION,
        "elapsed_s": round(time.perf_counter() - start, 3), "groups_built": built, "skipped": skipped.as_dict(),
    }
    if hasattr(tok, "describe"):  # a Hugging Face tokenizer: which file, and whether [MASK] was added
        manifest["tokenizer_details"] = tok.describe()
    write_manifest(out, manifest)  # last: a manifest only ever points at complete shards
    os.remove(os.path.join(out, STATE_NAME))
    return manifest


def _run_groups(docs: Sequence[str], out: str, split: str, settings: dict[str, Any], workers: int,
                progress: bool) -> tuple[list[dict[str, Any]], int]:
    """The done records of every group of `split` in order, building the unfinished ones; + how many were built."""
    n_per = settings["docs_per_group"]
    groups = [(g, docs[i : i + n_per]) for g, i in enumerate(range(0, len(docs), n_per))]
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for g, group_docs in groups:
        done = _read_done(os.path.join(out, split, _group_name(g)), _fingerprint(group_docs))
        if done is not None:
            results[g] = done
        else:
            todo.append((out, split, g, group_docs, settings))
    bar = tqdm(total=len(todo), desc=f"{split} groups", unit="group", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        for task in todo:
            results[task[2]] = build_group(*task)
            bar.update()
    else:
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("fork")) as pool:
            for task, done in zip(todo, pool.map(build_group, *zip(*todo)), strict=True):
                results[task[2]] = done
                bar.update()
    bar.close()
    return [results[g] for g, _ in groups], len(todo)


def _check_synthetic(source: str, tok: Tokenizer, seq_len: int) -> HMMSpec:
    """The source's spec, after checking that the tokenizer holds exactly its symbols."""
    spec = parse_source(source)
    sequence_length(seq_len)
    if getattr(tok, "symbols", None) != spec.symbols:
        wanted = "synthetic" if spec.symbols == 64 else f"synthetic-{spec.symbols}"
        raise ValueError(f"data source {source!r} emits {spec.symbols} symbols: it needs tokenizer {wanted!r} "
                         f"(data.tokenizer={wanted} / --tokenizer {wanted}), not {tok.name!r}")
    return spec


def _group_name(g: int) -> str:
    return f"g{g:05d}"


def _fingerprint(docs: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(str(doc).encode("utf-8", "surrogatepass"))  # str: a synthetic source's sequence index
        digest.update(b"\x00")
    return digest.hexdigest()


def _read_done(directory: str, fingerprint: str) -> dict[str, Any] | None:
    """A finished group's record, if it exists, is for these documents and all its shards are intact."""
    try:
        with open(os.path.join(directory, DONE_NAME), encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    if done.get("fingerprint") != fingerprint:
        return None
    for shard_list in done["shards"].values():
        for s in shard_list:
            path = os.path.join(directory, s["file"])
            if not os.path.isfile(path) or os.path.getsize(path) != s["bytes"]:
                return None
    return done


def build_group(out: str, split: str, g: int, docs: Sequence[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Tokenise, pack and write one group into `<out>/<split>/gNNNNN/` via a staging directory."""
    name = _group_name(g)
    final = os.path.join(out, split, name)
    staging = os.path.join(out, split, f".{name}.partial")
    for stale in (staging, final):
        if os.path.exists(stale):
            shutil.rmtree(stale)
    tok = get_tokenizer(settings["tokenizer"])
    stats = {"tokens": 0}
    if is_synthetic(settings["source"]):
        blocks = hmm_blocks(settings["source"], docs, settings["seq_len"], tok.bos_id, tok.eos_id)
        stats["tokens"] = len(docs) * (settings["seq_len"] - 1)  # each sequence's symbols and its EOS
    else:
        blocks = pack_blocks(_tokenize(tok, docs, stats), settings["seq_len"], tok.bos_id, tok.eos_id)
    count, shards = write_group(blocks, staging, settings["seq_len"], settings["format"],
                                settings["shard_size_bytes"], key_prefix=f"{name}_")
    done = {"group": name, "fingerprint": _fingerprint(docs), "documents": len(docs), "tokens": stats["tokens"],
            "blocks": count, "shards": shards}
    write_json_atomic(os.path.join(staging, DONE_NAME), done)
    os.replace(staging, final)
    return done


def _tokenize(tok: Tokenizer, docs: Sequence[str], stats: dict[str, int]) -> Iterator[list[int]]:
    """Token ids per document; `stats["tokens"]` counts them, each document's EOS included."""
    for i in range(0, len(docs), _TOKENIZE_CHUNK):
        for ids in tok.encode_batch(list(docs[i : i + _TOKENIZE_CHUNK])):
            stats["tokens"] += len(ids) + 1
            yield ids


def _merge_mds_index(out: str, split: str, results: list[dict[str, Any]]) -> None:
    """`<split>/index.json` over all groups' MDS shards (basenames relative to the split directory)."""
    merged: list[dict[str, Any]] = []
    for r in results:
        with open(os.path.join(out, split, r["group"], "index.json"), encoding="utf-8") as f:
            for shard in json.load(f)["shards"]:
                for key in ("raw_data", "zip_data"):
                    if shard.get(key):
                        shard[key]["basename"] = f"{r['group']}/{shard[key]['basename']}"
                merged.append(shard)
    write_json_atomic(os.path.join(out, split, "index.json"), {"version": 2, "shards": merged})


def _claim_output(out: str, settings: dict[str, Any], overwrite: bool) -> None:
    """Start fresh (with --overwrite), resume an unfinished run with the same settings, or refuse."""
    manifest, state = os.path.join(out, MANIFEST_NAME), os.path.join(out, STATE_NAME)
    ours = [manifest, state, *(os.path.join(out, s) for s in SPLITS)]
    existing = [p for p in ours if os.path.exists(p)]
    if existing and not overwrite:
        if os.path.exists(manifest):
            raise FileExistsError(f"{out} already holds prepared data ({manifest}); pass --overwrite")
        previous = _read_state(state)
        if previous != settings:
            raise FileExistsError(
                f"{out} holds an unfinished preparation with other settings ({previous}); "
                "rerun with those settings to resume it, or pass --overwrite to start over"
            )
        return  # resume
    for path in existing:  # manifest.json comes first in `ours`, so it is gone before the shards
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(out, exist_ok=True)
    write_json_atomic(state, settings)


def _read_state(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def format_summary(manifest: dict[str, Any], out: str) -> str:
    m = manifest
    lines = [f"wrote {m['format']} shards to {out} (seq_len {m['seq_len']}, tokenizer {m['tokenizer']}, "
             f"{m.get('groups_built', '?')} groups built)"]
    for split, s in m["splits"].items():
        lines.append(
            f"  {split:5s}: {s['documents']:>8,} documents {s['tokens']:>12,} tokens {s['blocks']:>9,} blocks"
        )
    for fmt, per_split in m.get("shards", {}).items():
        lines.append(f"  {fmt}: " + ", ".join(f"{split} {len(files)} shards" for split, files in per_split.items()))
    skipped = m.get("skipped", {})
    bad, ignored = skipped.get("bad_files", []), skipped.get("ignored_files", [])
    if bad or ignored:
        lines.append(f"  skipped: {len(bad)} files not UTF-8 text, {len(ignored)} files of other kinds"
                     + "".join(f"\n    {reason}" for reason in bad[:10]))
    details = m.get("tokenizer_details")
    if details and details.get("added_tokens"):
        lines.append(f"  tokenizer: added {', '.join(details['added_tokens'])} (mask id {details['mask_id']})")
    lines.append(f"  elapsed: {m['elapsed_s']:.1f} s")
    return "\n".join(lines)
