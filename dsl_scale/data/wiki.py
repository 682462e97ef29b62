"""Real Wikipedia articles from gensim's test data, cleaned from wiki markup to plain prose."""

from __future__ import annotations

import bz2
import importlib.util
import os
import re
from collections.abc import Iterator

WIKI_SAMPLE_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Reference-like sections: lists of citations and links, not prose.
_DROP_SECTIONS = {
    "references", "notes", "external links", "see also", "bibliography", "further reading",
    "sources", "citations", "footnotes", "notes and references", "works cited", "links",
}

_HEADING = re.compile(r"^\s*(=+)\s*(.*?)\s*=+\s*$")
_EMPHASIS = re.compile(r"'{2,}")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?])")
# Leftovers of images that filter_wiki lets through: <gallery> entries ("File:x.jpg|caption") and
# caption options ("caption|thumb", "caption|alt=...", "caption|220px").
_GALLERY_LINE = re.compile(r"^((file|image):|[^|]*\.(jpe?g|png|gif|svg|tiff?)\|)", re.IGNORECASE)
_IMAGE_OPTIONS = re.compile(r"\|(alt=|thumb|upright|left\b|right\b|center\b|\d+(x\d+)?px).*$")


def wiki_sample_path() -> str:
    """Path of the bz2 XML dump in gensim's test data, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the wikipedia-sample source reads {WIKI_SAMPLE_FILE} from gensim's test data, "
            "but gensim is not installed (pip install gensim)"
        )
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "test", "test_data", WIKI_SAMPLE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"wikipedia-sample file not found: {path} (reinstall gensim)")
    return path


def clean_wiki_text(filtered: str) -> str:
    """Turn gensim's `filter_wiki` output (links/templates already removed) into plain paragraphs."""
    paragraphs: list[tuple[int, str]] = []  # (heading level, text); level 0 = body text
    dropping_level = 0  # > 0 while inside a dropped reference-like section
    for raw in filtered.splitlines():
        heading = _HEADING.match(raw)
        if heading:
            level, title = len(heading.group(1)), _tidy(heading.group(2))
            if dropping_level and level > dropping_level:
                continue
            dropping_level = level if title.lower() in _DROP_SECTIONS else 0
            if not dropping_level and title:
                paragraphs.append((level, title))
            continue
        if dropping_level:
            continue
        line = _tidy(_IMAGE_OPTIONS.sub("", _LIST_MARKER.sub("", raw.strip())))
        if line and not _GALLERY_LINE.match(line):
            paragraphs.append((0, line))
    return "\n\n".join(text for _, text in _drop_empty_headings(paragraphs))


def _tidy(line: str) -> str:
    line = _EMPHASIS.sub("", line)
    line = _EMPTY_PARENS.sub("", line)
    line = _SPACES.sub(" ", line)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", line).strip()


def _drop_empty_headings(paragraphs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Drop headings with no text under them (next is a heading of the same or higher rank, or the end)."""
    kept: list[tuple[int, str]] = []
    for level, text in reversed(paragraphs):
        if level and (not kept or (kept[-1][0] and kept[-1][0] <= level)):
            continue
        kept.append((level, text))
    return kept[::-1]


def iter_wikipedia_sample() -> Iterator[str]:
    """~100 real articles in dump order; redirects and pages with no text left after cleaning are skipped."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(wiki_sample_path(), "rb") as f:
        for _title, markup, _page_id in extract_pages(f, filter_namespaces=("0",)):
            if markup.lstrip()[:9].upper() == "#REDIRECT":
                continue
            text = clean_wiki_text(filter_wiki(markup))
            if text:
                yield text
