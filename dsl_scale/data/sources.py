"""Raw text sources: named corpora (a registry) and local files or folders of them.

Local files: `.txt` (one document per file; an OpenWebText-style folder of .txt documents is a folder
source), `.jsonl` and zstandard-compressed `.jsonl.zst` (one {"text": ...} object per line), and
Wikipedia XML dumps `.xml` / `.xml.bz2`. Every source yields non-empty document strings in a
deterministic order (folders: sorted paths, recursive), so the train/val split and the packed blocks
are reproducible. `synthetic-hmm[-…]` (data/synthetic_hmm.py) generates token blocks instead of text: the
shard writer (data/prepare.py) writes it directly.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from dsl_scale.data.packaged import iter_packaged_english
from dsl_scale.data.synthetic_hmm import is_synthetic
from dsl_scale.data.wiki import iter_wikipedia_sample
from dsl_scale.data.wiki_dump import iter_wiki_dump

LOCAL_SUFFIXES = (".txt", ".jsonl", ".jsonl.zst", ".xml", ".xml.bz2")

SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "wikipedia-sample": iter_wikipedia_sample,
    "packaged-english": iter_packaged_english,
}


def _suffix(path: Path) -> str:
    """The longest known suffix of `path` ("" if none): `.jsonl.zst` before `.jsonl`."""
    name = path.name.lower()
    return max((s for s in LOCAL_SUFFIXES if name.endswith(s)), key=len, default="")


def iter_documents(source: str) -> Iterator[str]:
    """Documents of a named source, or of a local .txt file, .jsonl file or folder (recursive, sorted).

    Not a generator itself, so an unknown or missing source raises here rather than at the first `next`.
    """
    if source in SOURCES:
        return SOURCES[source]()
    if is_synthetic(source):
        raise ValueError(f"data source {source!r} generates token blocks, not text: prepare it with "
                         "dsl_scale.data.prepare.prepare (tools/prepare_data.py, or data.source= for training)")
    path = Path(source)
    if path.is_dir():
        return _iter_folder(path)
    if path.is_file():
        if not _suffix(path):
            raise ValueError(f"unsupported source file {path}: expected one of {', '.join(LOCAL_SUFFIXES)}")
        return _iter_file(path)
    if os.sep in source or _suffix(path):
        raise FileNotFoundError(f"data source not found: {source}")
    raise ValueError(
        f"unknown data source {source!r}; valid choices: {', '.join(sorted(SOURCES))}, synthetic-hmm[-KEYVALUE…], "
        f"or a path to a {' / '.join(LOCAL_SUFFIXES)} file or a folder of them"
    )


def _iter_folder(root: Path) -> Iterator[str]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and _suffix(p))
    for path in files:
        yield from _iter_file(path)


def _iter_file(path: Path) -> Iterator[str]:
    suffix = _suffix(path)
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        if text.strip():
            yield text
    elif suffix in (".xml", ".xml.bz2"):
        yield from iter_wiki_dump(path)
    else:
        yield from _iter_jsonl(path)


def _open_text(path: Path):
    if _suffix(path) != ".jsonl.zst":
        return path.open(encoding="utf-8")
    try:
        import zstandard
    except ImportError as err:
        raise ImportError(f"{path}: reading .zst files needs the zstandard package (pip install zstandard)") from err
    return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(path.open("rb")), encoding="utf-8")


def _iter_jsonl(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is one
                raise ValueError(f"{path}:{lineno}: want a JSON object with a 'text' field: {err}") from err
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: 'text' must be a string, got {type(text).__name__}")
            if text.strip():
                yield text
