"""The documentation's relative links: every file and #anchor in README.md and docs/ exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`]+`")
LINK = re.compile(r"\[[^\[\]]*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """Markdown without fenced code blocks, whose brackets and hashes are not links or headings."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped,
    spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` whose file or #anchor does not exist, as `target: why`."""
    text = CODE_SPAN.sub("", prose(path.read_text(encoding="utf-8")))
    problems = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(linked):
            problems.append(f"{target}: no heading with that anchor in {linked.name}")
    return problems


def test_the_docs_are_there() -> None:
    """README.md and the pages it names by reader exist, so the link check below has work."""
    names = {path.name for path in DOCS}
    for name in ("using.md", "operations.md", "security.md", "scaling.md", "devpi.md"):
        assert name in names
    assert "development.md" in names


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    """Every relative link points at an existing file and, with #anchor, at one of its headings."""
    assert broken_links(path) == []


def test_the_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    """A link to a missing file, or to a heading that is not there, is reported; others are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Behind `nginx`: TLS\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Twice\n\n## Twice\n\n"
        "[ok](other.md#behind-nginx-tls) [ok](#twice-1) [ok](https://pkgs.example/x#y)\n"
        "[gone](missing.md) [wrong](other.md#behind-nginx) [wrong](#nowhere)\n"
        "`[in code](missing-too.md)`\n\n```\n[in a block](missing-three.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#behind-nginx: no heading with that anchor in other.md",
        "#nowhere: no heading with that anchor in page.md",
    ]
