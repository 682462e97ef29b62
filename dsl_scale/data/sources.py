"""Raw text sources: named corpora (a registry) and local .txt / .jsonl files or folders of them.

Every source yields non-empty document strings in a deterministic order, so the train/val split and
the packed blocks are reproducible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from dsl_scale.data.wiki import iter_wikipedia_sample

LOCAL_SUFFIXES = (".txt", ".jsonl")

# Named sources; later ones (packaged-english, OpenWebText folders, ...) register here.
SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "wikipedia-sample": iter_wikipedia_sample,
}


def register_source(name: str, factory: Callable[[], Iterator[str]]) -> None:
    """Make `iter_documents(name)` call `factory()`."""
    if name in SOURCES:
        raise ValueError(f"source {name!r} is already registered")
    SOURCES[name] = factory


def iter_documents(source: str) -> Iterator[str]:
    """Documents of a named source, or of a local .txt file, .jsonl file or folder (recursive, sorted).

    Not a generator itself, so an unknown or missing source raises here rather than at the first `next`.
    """
    if source in SOURCES:
        return SOURCES[source]()
    path = Path(source)
    if path.is_dir():
        return _iter_folder(path)
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise ValueError(f"unsupported source file {path}: expected one of {', '.join(LOCAL_SUFFIXES)}")
        return _iter_file(path)
    if os.sep in source or path.suffix in LOCAL_SUFFIXES:
        raise FileNotFoundError(f"data source not found: {source}")
    raise ValueError(
        f"unknown data source {source!r}; valid choices: {', '.join(sorted(SOURCES))}, "
        f"or a path to a {' / '.join(LOCAL_SUFFIXES)} file or a folder of them"
    )


def _iter_folder(root: Path) -> Iterator[str]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    for path in files:
        yield from _iter_file(path)


def _iter_file(path: Path) -> Iterator[str]:
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        if text.strip():
            yield text
    else:
        yield from _iter_jsonl(path)


def _iter_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
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
