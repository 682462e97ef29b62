"""Raw text sources: named corpora (a registry) and local files or folders of them.

Local files: `.txt` (one document per file; an OpenWebText-style folder of .txt documents is a folder
source), `.jsonl` and zstandard-compressed `.jsonl.zst` (one {"text": ...} object per line), and
Wikipedia XML dumps `.xml` / `.xml.bz2`. `hf:NAME[:SPLIT]`: a Hugging Face dataset's `text` column, from a
`save_to_disk` folder NAME (`datasets.load_from_disk`) or streamed from the Hub (`load_dataset(..., streaming=True)`),
split `train` unless named. Every source yields non-empty document strings in a deterministic order (folders:
sorted paths, recursive), so the train/val split and the packed blocks are reproducible. A file that is not
UTF-8 text is an error naming it, or, with `skip_bad_files`, skipped and reported. `synthetic-hmm[-…]`
(data/synthetic_hmm.py) generates token blocks instead of text: the
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
HF_PREFIX = "hf:"
TEXT_COLUMN = "text"


class UndecodableFile(ValueError):
    """A source file that is not UTF-8 text."""


class Skipped:
    """What a read left out: files that could not be decoded (skipped) and, in folders, files of other kinds
    (ignored)."""

    def __init__(self) -> None:
        self.bad: list[str] = []
        self.ignored: list[str] = []

    def as_dict(self) -> dict[str, list[str]]:
        return {"bad_files": list(self.bad), "ignored_files": list(self.ignored)}

SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "wikipedia-sample": iter_wikipedia_sample,
    "packaged-english": iter_packaged_english,
}


def _suffix(path: Path) -> str:
    """The longest known suffix of `path` ("" if none): `.jsonl.zst` before `.jsonl`."""
    name = path.name.lower()
    return max((s for s in LOCAL_SUFFIXES if name.endswith(s)), key=len, default="")


def check_data_given(data) -> None:
    """`data`, a run's DataConfig: refuse a run that has no data, where `data.path` does not exist and there is
    no `data.source` to prepare it from (the GPU presets set none, so that a 32-GPU job never trains on the
    packaged sample) and no `data.remote`."""
    if data.remote or data.source or os.path.exists(data.path):
        return
    raise FileNotFoundError(f"data.path={data.path} does not exist and data.source is empty, so there is nothing "
                            "to train on: pass data.path= to prepared shards (tools/prepare_data.py; docs/data.md)")


def iter_documents(source: str, skip_bad_files: bool = False, skipped: Skipped | None = None) -> Iterator[str]:
    """Documents of a named source, a Hugging Face dataset (`hf:...`), or a local .txt file, .jsonl file or
    folder (recursive, sorted). With `skip_bad_files`, a file that is not UTF-8 text is left out and named in
    `skipped` instead of stopping the read.

    Not a generator itself, so an unknown or missing source raises here rather than at the first `next`.
    """
    skipped = skipped if skipped is not None else Skipped()
    if source.startswith(HF_PREFIX):
        return _iter_hf(source[len(HF_PREFIX):])
    if source in SOURCES:
        return SOURCES[source]()
    if is_synthetic(source):
        raise ValueError(f"data source {source!r} generates token blocks, not text: prepare it with "
                         "dsl_scale.data.prepare.prepare (tools/prepare_data.py, or data.source= for training)")
    path = Path(source)
    if path.is_dir():
        return _iter_folder(path, skip_bad_files, skipped)
    if path.is_file():
        if not _suffix(path):
            raise ValueError(f"unsupported source file {path}: expected one of {', '.join(LOCAL_SUFFIXES)}")
        return _iter_files([path], skip_bad_files, skipped)
    if os.sep in source or _suffix(path):
        raise FileNotFoundError(f"data source not found: {source}")
    raise ValueError(
        f"unknown data source {source!r}; valid choices: {', '.join(sorted(SOURCES))}, synthetic-hmm[-KEYVALUE…], "
        f"hf:NAME[:SPLIT] (a Hugging Face dataset), or a path to a {' / '.join(LOCAL_SUFFIXES)} file or a folder "
        "of them"
    )


def _iter_hf(spec: str) -> Iterator[str]:
    """The `text` column of a `save_to_disk` folder or a streamed Hub dataset, NAME[:SPLIT]."""
    name, sep, split = spec.rpartition(":")
    if not sep or Path(spec).exists():
        name, split = spec, ""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("data source hf:...: needs the `datasets` package (pip install datasets)") from err
    if Path(name).exists():
        data = datasets.load_from_disk(name)
        if isinstance(data, datasets.DatasetDict):
            split = split or "train"
            if split not in data:
                raise ValueError(f"hf:{spec}: no split {split!r} in {name} (splits: {', '.join(data)})")
            data = data[split]
        elif split:
            raise ValueError(f"hf:{spec}: {name} holds one dataset, not splits: drop ':{split}'")
    else:
        try:
            data = datasets.load_dataset(name, split=split or "train", streaming=True)
        except Exception as err:  # the Hub client's: offline, unknown name or split
            raise ValueError(f"hf:{spec}: not a saved dataset folder, and the Hub did not give it "
                             f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    columns = data.column_names or []
    if TEXT_COLUMN not in columns:
        raise ValueError(f"hf:{spec}: no {TEXT_COLUMN!r} column (columns: {', '.join(columns) or 'unknown'})")
    return _iter_hf_rows(data, spec)


def _iter_hf_rows(data, spec: str) -> Iterator[str]:
    for i, row in enumerate(data.select_columns([TEXT_COLUMN])):
        text = row[TEXT_COLUMN]
        if not isinstance(text, str):
            raise ValueError(f"hf:{spec}: row {i}: {TEXT_COLUMN!r} must be a string, got {type(text).__name__}")
        if text.strip():
            yield text


def _iter_folder(root: Path, skip_bad_files: bool, skipped: Skipped) -> Iterator[str]:
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    skipped.ignored += [str(p) for p in paths if not _suffix(p)]
    return _iter_files([p for p in paths if _suffix(p)], skip_bad_files, skipped)


def _iter_files(paths: list[Path], skip_bad_files: bool, skipped: Skipped) -> Iterator[str]:
    for path in paths:
        if not skip_bad_files:
            yield from _iter_file(path)
            continue
        try:
            docs = list(_iter_file(path))  # whole, so that a bad file gives none of its documents
        except UndecodableFile as err:
            skipped.bad.append(str(err))
            continue
        yield from docs


def _iter_file(path: Path) -> Iterator[str]:
    try:
        yield from _iter_file_documents(path)
    except UnicodeDecodeError as err:
        raise UndecodableFile(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8, "
                              "remove it, or skip such files (--skip-bad-files)") from None


def _iter_file_documents(path: Path) -> Iterator[str]:
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
        return io.StringIO(path.read_bytes().decode("utf-8"))  # decoded whole: a bad byte fails before any line
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
