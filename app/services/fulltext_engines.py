"""Writing the full-text index on its two engines, and the text they are given: rows of
`search_documents` that SQLite indexes in the FTS5 table `search_fts` (porter stemming,
unicode61 without diacritics, kept in step by triggers: app/data/schema.py) and PostgreSQL in
a weighted `tsvector` (the 'english' configuration, of text whose accents were removed here:
`unaccent` would need a superuser) under a GIN index. What is indexed: app/services/fulltext.py;
queries: app/services/search.py.
"""

from __future__ import annotations

import html.parser
import re
import unicodedata
from typing import Any

from sqlalchemy import Text, bindparam, func, insert, literal_column
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnClause

from app.core.render import render_description
from app.data.models import SearchDocument, utcnow

MAX_FIELD_CHARS = 200_000  # of one field's text: a long page is still found by its start
# Control characters are dropped from indexed text: snippets mark matches with two of them
# (app/services/search.py), so user content cannot forge the marks.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
WORD = re.compile(r"[^\W_]+")  # what both engines index as a word: letters and digits
TEXT_SEARCH_CONFIG = "english"  # PostgreSQL's: English stemming and stop words


# --- text -----------------------------------------------------------------------------------


def fold(value: str) -> str:
    """Text without accents (NFKD, combining marks dropped), for PostgreSQL's tsvector."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _clean(value: str | None) -> str:
    return _CONTROL.sub(" ", value or "")[:MAX_FIELD_CHARS]


class _TextParser(html.parser.HTMLParser):
    """The visible text of an HTML page and its <title>: no scripts, styles or navigation."""

    HIDDEN = frozenset({"script", "style", "noscript", "template", "nav", "head", "svg"})
    BLOCKS = frozenset({"p", "div", "li", "br", "tr", "td", "th", "pre", "dt", "dd", "section"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.hidden = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.HIDDEN and self.hidden:
            self.hidden -= 1

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.hidden:
            self.parts.append(data)


def html_text(page: str) -> tuple[str, str]:
    """An HTML page's title and visible text, whitespace collapsed."""
    parser = _TextParser()
    parser.feed(page)
    parser.close()
    collapse = " ".join
    return collapse("".join(parser.title).split()), collapse("".join(parser.parts).split())


def description_text(description: str | None, content_type: str | None) -> str:
    """A description as words: rendered as the project page renders it, tags stripped."""
    if not description:
        return ""
    rendered = render_description(_clean(description), content_type)
    return html_text(str(rendered))[1] if rendered else ""


# --- writing --------------------------------------------------------------------------------
def write_documents(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    is_postgresql = session.get_bind().dialect.name == "postgresql"
    for row in rows:
        for field in ("name", "summary", "keywords", "description", "body", "title"):
            row[field] = _clean(row.get(field))
        row.setdefault("updated_at", utcnow())
    if not is_postgresql:
        session.execute(insert(SearchDocument), rows)
        return
    # PostgreSQL: the tsvector is computed by the server from each weight's words, given as
    # parameters (`weight_a` ... `weight_d`), in one executemany.
    for row in rows:
        row |= {
            "weight_a": _words(row["name"]),
            "weight_b": _words(row["summary"]),
            "weight_c": _words(f"{row['keywords']} {row['title']}"),
            "weight_d": _words(f"{row['description']} {row['body']}"),
        }
    session.execute(insert(SearchDocument).values(tsv=_TSVECTOR), rows)


def _words(value: str) -> str:
    # Words as FTS5's unicode61 and parse_query see them: PostgreSQL's parser would keep
    # "zope.interface" as one host name and drop "<script>" as a tag.
    return " ".join(WORD.findall(fold(value)))


def _weighted(weight: str) -> Any:
    config: ColumnClause[str] = literal_column(f"'{TEXT_SEARCH_CONFIG}'::regconfig")
    label: ColumnClause[str] = literal_column(f"'{weight}'")  # a "char", not a parameter
    words = bindparam(f"weight_{weight.lower()}", type_=Text())
    return func.setweight(func.to_tsvector(config, words), label)


_TSVECTOR = (
    _weighted("A").op("||")(_weighted("B")).op("||")(_weighted("C")).op("||")(_weighted("D"))
)
