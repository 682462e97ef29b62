"""The documentation holds together: every relative link in README.md and docs/ reaches a file (and, for a
Markdown file, the heading its #anchor names), the README stays short, and no page cites documents a reader
does not have (issue numbers, the internal spec)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_LIMIT_BYTES = 12 * 1024


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[*`]", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    text = without_code(page.read_text())
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = page if not path_part else (page.parent / path_part).resolve()
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.is_file() and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


def test_the_pages_exist_and_link_somewhere():
    names = {p.relative_to(REPO).as_posix() for p in pages()}
    for required in ("docs/README.md", "docs/method.md", "docs/internals.md", "docs/data.md",
                     "docs/training.md", "docs/checkpoints.md", "docs/sampling.md", "docs/evaluation.md",
                     "docs/clusters.md", "docs/benchmarks.md", "docs/results/README.md"):
        assert required in names, required
    assert len(links(REPO / "README.md")) >= 10


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page: Path):
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some section: here\n\ntext\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#some-section-here) [gone](c.md) [bad](a.md#nowhere) `[code](x.md)`\n"
                    "```\n[block](y.md)\n```\n[web](https://example.org) ![img](a.md)\n")
    assert broken_links(page) == ["c.md (no such file)", "a.md#nowhere (no heading #nowhere in a.md)"]


def test_the_readme_is_short():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes, over {README_LIMIT_BYTES}: move text to docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_page_cites_issue_numbers_or_the_internal_spec(page: Path):
    text = page.read_text()
    assert not re.findall(r"\bissues? #?\d+", text, re.I), "cite the docs page, not an issue number"
    assert "SPEC §" not in text, "cite docs/method.md §N instead of SPEC §N"


def test_the_method_page_keeps_the_spec_numbering():
    headings = re.findall(r"^## (\d+)\. ", (REPO / "docs" / "method.md").read_text(), re.M)
    assert headings == ["1", "2", "3", "4", "5", "6"]
