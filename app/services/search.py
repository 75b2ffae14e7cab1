"""Full-text search queries: the query language people type, and the SQL that answers it on
SQLite FTS5 or PostgreSQL tsvector (the index itself: app/services/fulltext.py).

Whatever is typed is read as words: every term reaches the engine quoted (FTS5) or as letters
and digits only (tsquery), so no input is engine syntax. Readable indexes are filtered in SQL.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Collection
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from app.services.fulltext_engines import TEXT_SEARCH_CONFIG, WORD, fold

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
MAX_TERMS = 16  # words and phrases in one query
SNIPPET_CHARS = 200  # of text in a snippet, cut at a space
SNIPPET_CONTEXT_CHARS = 60  # of text before the first match
SNIPPET_SCAN_CHARS = 50_000  # of a hit's text searched for a match to show
# Word endings dropped from a query word to highlight its other forms ("parsing": "parses"),
# roughly as the engines stem English; only the highlighting uses it, never the match.
_SUFFIXES = ("ing", "es", "ed", "s")
# Markers around highlighted words in snippets: control characters that are dropped from
# indexed text, so user content cannot forge them.
MARK_START, MARK_END = "\x02", "\x03"
_TERM = re.compile(r'(?:(?P<field>[A-Za-z]+):)?(?:"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+))')
_INDEX_PATH = re.compile(r"^[^/\s]+/[^/\s]+$")
_ESCAPE = "!"  # LIKE escape; not a backslash: its SQL literal differs between dialects
SCOPES = ("name", "summary", "docs")

# SQLite: the weight of each FTS5 column (app/data/schema.py's FTS_COLUMNS) in which the whole
# query matches. Not bm25(): it first counts every document holding each word (FTS5's IDF), so
# a common word and a rare one cost 60-150 ms however few documents hold both.
FTS_WEIGHTS = {"name": 10, "summary": 5, "keywords": 3, "title": 3, "description": 2, "body": 1}
FTS_SCOPE = {"name": "{name}", "summary": "{summary}", "docs": "{body title}"}
# PostgreSQL: name A, summary B, keywords and page titles C, description and page text D;
# ts_rank's weights for D, C, B, A. Docs pages rank at half (description > docs).
PG_WEIGHTS = "{0.1, 0.2, 0.4, 1.0}"
PG_SCOPE = {"name": "A", "summary": "B", "docs": ""}
DOCS_RANK_FACTOR = 0.5
# Past this many matches (a word in many documents) weighing them costs more than the 50 ms a
# search may take at 300,000 documents (bench/RESULTS.md): such a search lists the named
# releases, then the most recently indexed matches. Counting up to it is bounded work too.
BROAD_MATCHES = 1_000


class InvalidQuery(ValueError):
    """A search the server cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Term:
    """A word, a quoted phrase or a prefix (`word*`), maybe scoped to a field."""

    words: tuple[str, ...]
    is_prefix: bool = False
    scope: str | None = None  # one of SCOPES


@dataclasses.dataclass(frozen=True)
class Query:
    """A parsed search: terms that must all match, and the indexes it is limited to."""

    terms: tuple[Term, ...]
    index_paths: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The unscoped and `name:` words as a normalized project name (for the exact-name and
        name-prefix ranks)."""
        words = [w for t in self.terms if t.scope in (None, "name") for w in t.words]
        return "-".join(words)


def parse_query(value: str) -> Query:
    """Parse what someone typed: words, "quoted phrases", prefix*, name:/summary:/docs:
    scopes, index:USER/INDEX; anything else is read as words (never a syntax error)."""
    terms: list[Term] = []
    paths: list[str] = []
    for match in _TERM.finditer(value.strip()[:MAX_QUERY_CHARS]):
        field = (match["field"] or "").lower()
        raw = match["phrase"] if match["phrase"] is not None else match["word"]
        if field == "index":
            path = raw.strip().strip("/")
            if not _INDEX_PATH.match(path):
                raise InvalidQuery(
                    f"index: takes an index as USER/INDEX (index:alice/dev), not {raw[:60]!r}."
                )
            paths.append(path)
            continue
        scope = field if field in SCOPES else None
        if match["field"] and scope is None:
            raw = f"{match['field']} {raw}"  # "http://x" or "foo:bar": words, not a field
        words = tuple(w.lower() for w in WORD.findall(raw))
        if words:
            terms.append(Term(words, raw.rstrip().endswith("*"), scope))
    if len(terms) > MAX_TERMS:
        raise InvalidQuery(f"The search has {len(terms)} words and phrases; at most {MAX_TERMS}.")
    return Query(tuple(terms), tuple(paths))


def fts_column_matches(query: Query) -> dict[str, str]:
    """For each FTS5 column every term may match in (its scope allows it), the MATCH expression
    of the whole query within that column."""
    phrases = fts_match(Query(tuple(dataclasses.replace(t, scope=None) for t in query.terms)))
    return {
        column: f"{{{column}}} : ({phrases})"
        for column in FTS_WEIGHTS
        if all(t.scope is None or column in FTS_SCOPE[t.scope] for t in query.terms)
    }


def _fts_weight(columns: Collection[str]) -> str:
    cases = [
        f"CASE WHEN d.id IN (SELECT rowid FROM search_fts WHERE search_fts MATCH :in_{column})"  # noqa: S608 - column names are constants
        f" THEN {FTS_WEIGHTS[column]} ELSE 0 END"
        for column in columns
    ]
    return " + ".join(cases) or "0"


def fts_match(query: Query) -> str:
    """The FTS5 MATCH expression of a query: every term quoted, so none is FTS5 syntax."""
    parts = []
    for term in query.terms:
        phrase = '"' + " ".join(term.words) + '"' + (" *" if term.is_prefix else "")
        parts.append(f"{FTS_SCOPE[term.scope]} : {phrase}" if term.scope else phrase)
    return " AND ".join(parts)


def pg_tsquery(query: Query) -> str:
    """The to_tsquery text of a query: folded letters and digits only, weights for scopes."""
    parts = []
    for term in query.terms:
        weight = PG_SCOPE[term.scope] if term.scope else ""
        words = [fold(w) for w in term.words]
        lexemes = [
            f"{w}:{'*' if term.is_prefix and n == len(words) - 1 else ''}{weight}".rstrip(":")
            for n, w in enumerate(words)
        ]
        parts.append("(" + " <-> ".join(lexemes) + ")")
    return " & ".join(parts)


def _root(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def snippet_pattern(query: Query) -> re.Pattern[str]:
    """The words a snippet highlights: each word of the query (a phrase's too) with any ending,
    case- and accent-insensitively (matched against folded text when the text has accents)."""
    roots = {
        fold(word) if term.is_prefix and n == len(term.words) - 1 else _root(fold(word))
        for term in query.terms
        for n, word in enumerate(term.words)
    }
    alternatives = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))
    return re.compile(rf"(?<![^\W_])(?:{alternatives})[^\W_]*", re.IGNORECASE)


def make_snippet(pattern: re.Pattern[str], value: str) -> str:
    """About SNIPPET_CHARS of `value` from just before its first match, every match marked;
    empty when nothing in it matches (the engine matched a word form the pattern misses)."""
    match = pattern.search(value)
    if match is None:
        value = fold(value)
        match = pattern.search(value)
        if match is None:
            return ""
    start = match.start() - SNIPPET_CONTEXT_CHARS
    start = value.rfind(" ", 0, start) + 1 if start > 0 else 0
    end = value.find(" ", start + SNIPPET_CHARS)
    end = len(value) if end < 0 else end
    marked = pattern.sub(lambda m: MARK_START + m.group() + MARK_END, value[start:end])
    return ("…" if start else "") + marked.strip() + ("…" if end < len(value) else "")


@dataclasses.dataclass(frozen=True)
class Hit:
    """A release, docs page or mirrored project that matches a query."""

    kind: str  # release, docs or mirror
    name: str  # as uploaded; a docs page's project by its normalized name
    normalized_name: str
    index_path: str
    version: str
    path: str  # a docs page's path in the doc set
    title: str
    summary: str
    snippet: str  # text around the matches, MARK_START/MARK_END around each

    @property
    def is_mirror(self) -> bool:
        """Whether a mirror cached this project (nothing uploaded here)."""
        return self.kind == "mirror"

    @property
    def snippet_html(self) -> Markup:
        """The snippet escaped, with <mark> around the matches (it is user content)."""
        return Markup(  # noqa: S704 - every character of the snippet is escaped first
            str(escape(self.snippet)).replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")
        )

    @property
    def snippet_text(self) -> str:
        """The snippet without markers."""
        return self.snippet.replace(MARK_START, "").replace(MARK_END, "")


def _like(value: str) -> str:
    return (
        value.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    )


_COLUMNS = """
    d.id, d.kind, d.name, d.normalized_name, d.version, d.path, d.title, d.summary,
    u.username || '/' || i.name AS index_path,
    CASE WHEN d.kind = 'docs' THEN 2 WHEN d.normalized_name = :name THEN 0
         WHEN d.normalized_name LIKE :prefix ESCAPE '!' THEN 1 ELSE 2 END AS name_rank"""
_JOINS = """
    JOIN indexes i ON i.id = d.index_id JOIN users u ON u.id = i.owner_id"""
# SQLite: the full-text match drives every join (CROSS JOIN fixes SQLite's join order). Left to
# itself the planner may read the documents of the readable indexes by `index_id` and run the
# MATCH once per document: tens of seconds at 300,000 documents.
_FTS_JOINS = """
    CROSS JOIN search_documents d ON d.id = search_fts.rowid
    CROSS JOIN indexes i ON i.id = d.index_id CROSS JOIN users u ON u.id = i.owner_id"""
# The releases named as the query, or with it as a prefix (`flask` -> `flask-login`): an index
# range, not LIKE ('-' sorts just before '.'), then checked against the match.
_NAMED = """
    d.kind <> 'docs' AND d.normalized_name >= :name AND d.normalized_name < :name_dot
    AND (d.normalized_name = :name OR d.normalized_name > :name_dash)"""

# Whether the query matches more than BROAD_MATCHES documents (stops counting there), among
# those the caller may read and asked for: documents of other indexes must not change the answer.
SQLITE_COUNT = f"""
SELECT count(*) FROM (SELECT d.id FROM search_fts {_FTS_JOINS}
    WHERE search_fts MATCH :match AND FILTERS LIMIT :cap) AS m"""  # noqa: S608
# PostgreSQL counts the newest matches, as the recent statement then reads them: by the primary
# key, a word in many documents stops after `cap` rows, in the same pages each time. Without an
# order, a sequential scan of a table larger than a quarter of shared_buffers starts where the
# last one stopped (synchronized scans) and reads through a small ring of buffers: a prefix in
# one document of six took 15-70 ms, depending on where it started.
POSTGRESQL_COUNT = f"""
SELECT count(*) FROM (SELECT d.id FROM search_documents d {_JOINS}
    WHERE d.tsv @@ to_tsquery('{TEXT_SEARCH_CONFIG}', :match) AND FILTERS
    ORDER BY d.id DESC LIMIT :cap) AS m"""  # noqa: S608

# Ranked: exact name, name prefix, field weights (the columns the whole query matches in on
# SQLite, each read once as a list of rowids; ts_rank on PostgreSQL), most recent.
SQLITE_RANKED = f"""
SELECT {_COLUMNS}
FROM search_fts {_FTS_JOINS}
WHERE search_fts MATCH :match AND FILTERS
ORDER BY name_rank, WEIGHT DESC, d.updated_at DESC, d.id
LIMIT :limit OFFSET :offset"""  # noqa: S608 - constants; input goes in bound parameters
POSTGRESQL_RANKED = f"""
SELECT {_COLUMNS}
FROM search_documents d CROSS JOIN to_tsquery('{TEXT_SEARCH_CONFIG}', :match) AS q {_JOINS}
WHERE d.tsv @@ q AND FILTERS
ORDER BY name_rank,
    ts_rank('{PG_WEIGHTS}', d.tsv, q)
        * CASE WHEN d.kind = 'docs' THEN {DOCS_RANK_FACTOR} ELSE 1 END DESC,
    d.updated_at DESC, d.id
LIMIT :limit OFFSET :offset"""  # noqa: S608 - as above

# Broad (a very common word): weighing every match would take seconds, so the named releases
# come first, then the most recently indexed matches, which both engines read newest first
# from their index and stop at the page.
# SQLite: the name's range of the name index, not every document of the readable indexes (each
# then matched); INDEXED BY, and CROSS JOIN for the join order, make the planner keep to it.
SQLITE_NAMED = f"""
SELECT {_COLUMNS}
FROM search_documents d INDEXED BY ix_search_documents_normalized_name
    CROSS JOIN indexes i ON i.id = d.index_id CROSS JOIN users u ON u.id = i.owner_id
WHERE {_NAMED} AND FILTERS AND EXISTS (
    SELECT 1 FROM search_fts WHERE search_fts MATCH :match AND search_fts.rowid = d.id)
ORDER BY name_rank, d.updated_at DESC, d.id LIMIT :window"""  # noqa: S608 - as above
POSTGRESQL_NAMED = f"""
SELECT {_COLUMNS} FROM search_documents d {_JOINS}
WHERE {_NAMED} AND FILTERS AND d.tsv @@ to_tsquery('{TEXT_SEARCH_CONFIG}', :match)
ORDER BY name_rank, d.updated_at DESC, d.id LIMIT :window"""  # noqa: S608 - as above
SQLITE_RECENT = f"""
SELECT {_COLUMNS}
FROM search_fts {_FTS_JOINS}
WHERE search_fts MATCH :match AND FILTERS
ORDER BY search_fts.rowid DESC LIMIT :window"""  # noqa: S608 - as above
POSTGRESQL_RECENT = f"""
SELECT {_COLUMNS} FROM search_documents d {_JOINS}
WHERE d.tsv @@ to_tsquery('{TEXT_SEARCH_CONFIG}', :match) AND FILTERS
ORDER BY d.id DESC LIMIT :window"""  # noqa: S608 - as above

# Snippets are cut in Python from the stored text of the page's rows (a primary-key read): FTS5's
# snippet() and ts_headline tokenize each hit's whole text (3 ms a hit for a word that occurs
# dozens of times in a page; 45-180 ms for a page of PostgreSQL hits, bench/RESULTS.md).
SNIPPET_TEXT = """
SELECT id, substr(summary || ' ' || description || ' ' || title || ' ' || body || ' ' || keywords,
    1, :scan) FROM search_documents WHERE id IN :ids"""
SQL = {
    "sqlite": {
        "count": SQLITE_COUNT,
        "ranked": SQLITE_RANKED,
        "named": SQLITE_NAMED,
        "recent": SQLITE_RECENT,
    },
    "postgresql": {
        "count": POSTGRESQL_COUNT,
        "ranked": POSTGRESQL_RANKED,
        "named": POSTGRESQL_NAMED,
        "recent": POSTGRESQL_RECENT,
    },
}


def search(
    session: Session,
    query: Query,
    *,
    limit: int,
    offset: int = 0,
    index_ids: Collection[int] | None = None,
) -> list[Hit]:
    """The hits of a parsed query, best first (exact name, name prefix, field weights, most
    recent; past BROAD_MATCHES matches: named releases, then most recent), at most `limit`
    from `offset`, only on the indexes `index_ids` (None: every one)."""
    if not query.terms:
        return []
    dialect = session.get_bind().dialect.name
    sql = SQL[dialect]
    filters = ["1 = 1"]
    params: dict[str, Any] = {
        "match": fts_match(query) if dialect == "sqlite" else pg_tsquery(query),
        "name": query.name,
        "prefix": _like(query.name) + "-%",
        "name_dash": query.name + "-",
        "name_dot": query.name + ".",
        "limit": limit,
        "offset": offset,
        "window": offset + limit,
        "cap": BROAD_MATCHES + 1,
    }
    expanding: list[BindParameter[Any]] = []
    if index_ids is not None:
        filters.append("d.index_id IN :index_ids")
        params["index_ids"] = list(index_ids) or [-1]
        expanding.append(bindparam("index_ids", expanding=True))
    if query.index_paths:
        filters.append("u.username || '/' || i.name IN :index_paths")
        params["index_paths"] = list(query.index_paths)
        expanding.append(bindparam("index_paths", expanding=True))
    if any(t.scope == "docs" for t in query.terms):
        filters.append("d.kind = 'docs'")

    if dialect == "sqlite":
        columns = fts_column_matches(query)
        params |= {f"in_{column}": match for column, match in columns.items()}

    def run(name: str) -> list[Any]:
        sql_text = sql[name].replace("FILTERS", " AND ".join(filters))
        if dialect == "sqlite":
            sql_text = sql_text.replace("WEIGHT", _fts_weight(columns))
        statement = text(sql_text)
        return list(session.execute(statement.bindparams(*expanding), params))

    try:
        if dialect == "postgresql":
            # Plans for this query's words, not generic ones: psycopg prepares a statement run
            # five times, and PostgreSQL then reuses a plan made without the tsquery, which
            # builds the GIN bitmap of every match of a common word (40-100 ms at 300,000
            # documents) where a plan that knows the word stops after BROAD_MATCHES rows.
            session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        if (run("count")[0][0] or 0) > BROAD_MATCHES:
            named = run("named")
            seen = {row.id for row in named}
            rows = (named + [r for r in run("recent") if r.id not in seen])[offset : offset + limit]
        else:
            rows = run("ranked")
        texts = session.execute(
            text(SNIPPET_TEXT).bindparams(bindparam("ids", expanding=True)),
            {"ids": [row.id for row in rows] or [-1], "scan": SNIPPET_SCAN_CHARS},
        )
        pattern = snippet_pattern(query)
        snippets = {row_id: make_snippet(pattern, value or "") for row_id, value in texts}
    except DBAPIError as exc:  # a query the parser let through but the engine refused
        session.rollback()
        log.warning("search %r failed: %s", query, exc.orig)
        raise InvalidQuery("The search could not be run; use words, quotes and *.") from None
    return [
        Hit(
            kind=row.kind,
            name=row.name or row.normalized_name,
            normalized_name=row.normalized_name,
            index_path=row.index_path,
            version=row.version,
            path=row.path,
            title=row.title,
            summary=row.summary,
            snippet=snippets.get(row.id) or "",
        )
        for row in rows
    ]
