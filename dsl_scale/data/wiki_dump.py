"""Wikipedia XML dumps (`pages-articles*.xml[.bz2]`) read with the standard library only.

Pages are streamed with `xml.etree.ElementTree.iterparse` (memory stays flat on multi-GB dumps), only
articles (namespace 0) that are not redirects are kept, and the wiki markup is stripped to plain prose
by `strip_wiki_markup`, which handles the common constructs (templates, tables, links, references,
HTML tags, emphasis), not every corner of MediaWiki's grammar.
"""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from dsl_scale.data.wiki import clean_wiki_text

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_DROP_TAGS = re.compile(r"<(gallery|math|code|pre|timeline|score|syntaxhighlight)[^>]*>.*?</\1>",
                        re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_FILE_LINK = re.compile(r"\[\[(?:file|image|category|media):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]",
                        re.IGNORECASE)
_INTERWIKI = re.compile(r"\[\[[a-z\-]{2,12}:[^\[\]]*\]\]")
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]")
_BARE_URL = re.compile(r"https?://\S+")
_ENTITIES = {"&nbsp;": " ", "&ndash;": "–", "&mdash;": "—", "&amp;": "&", "&lt;": "<", "&gt;": ">",
             "&quot;": '"'}


def _strip_nested(text: str, opening: str, closing: str) -> str:
    """Remove balanced `opening ... closing` spans (templates {{ }} and tables {| |} nest)."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(opening, i):
            depth += 1
            i += len(opening)
        elif depth and text.startswith(closing, i):
            depth -= 1
            i += len(closing)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def strip_wiki_markup(markup: str) -> str:
    """Plain paragraphs from wikitext: headings kept, reference-like sections dropped (see `clean_wiki_text`)."""
    text = _COMMENT.sub("", markup)
    text = _REF.sub("", text)
    text = _DROP_TAGS.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = _FILE_LINK.sub("", text)
    text = _INTERWIKI.sub("", text)
    for _ in range(2):  # a link label may itself hold a link
        text = _LINK.sub(r"\1", text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _BARE_URL.sub("", text)
    text = _TAG.sub("", text)
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    return clean_wiki_text(text)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop the export-schema namespace, whatever its version


def iter_wiki_dump(path: str | Path) -> Iterator[str]:
    """Cleaned article texts of a MediaWiki XML export, in dump order."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as f:
        try:
            yield from _pages(f)
        except ET.ParseError as err:
            raise ValueError(f"{path}: not a readable MediaWiki XML dump ({err})") from err


def _pages(f) -> Iterator[str]:
    namespace, text, redirect = "0", "", False
    for event, elem in ET.iterparse(f, events=("start", "end")):
        name = _local(elem.tag)
        if event == "start":
            if name == "page":
                namespace, text, redirect = "0", "", False
            continue
        if name == "ns":
            namespace = (elem.text or "").strip()
        elif name == "redirect":
            redirect = True
        elif name == "text":
            text = elem.text or ""
        elif name == "page":
            if namespace == "0" and not redirect and not text.lstrip()[:9].upper() == "#REDIRECT":
                cleaned = strip_wiki_markup(text)
                if cleaned:
                    yield cleaned
            elem.clear()
