"""Full-text search: what is indexed (releases, docs pages, mirrored names), how it stays in
step, and the query language, on SQLite FTS5 or PostgreSQL tsvector behind one interface.

One row of `search_documents` per project on an index (its newest release that is not
yanked), per HTML page of an uploaded doc set, and per project a mirror cached. SQLite indexes
the rows in the FTS5 table `search_fts` (porter stemming, unicode61 without diacritics), kept
in step by triggers; PostgreSQL keeps a weighted `tsvector` (the 'english' configuration, of
text whose accents were removed here: `unaccent` would need a superuser) under a GIN index.

Releases and mirror pages are indexed when the session that changed them commits (the
listeners at the bottom: every writer, present and future, goes through them); docs when they
are stored (`index_docset`: the zip is read from the blob store). Deleting a project, doc
set, mirror page or index deletes its rows by ON DELETE CASCADE.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html.parser
import logging
import re
import unicodedata
import zipfile
from collections.abc import Callable, Collection, Iterable
from typing import IO, Any, Protocol

from markupsafe import Markup, escape
from packaging.version import InvalidVersion, Version
from sqlalchemy import (
    bindparam,
    delete,
    event,
    func,
    insert,
    inspect,
    literal_column,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter, ColumnClause

from app.config import Settings
from app.db import Database
from app.models import DocSet, File, MirrorPage, Project, SearchDocument, utcnow
from app.progress import Progress
from app.storage import make_storage

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
MAX_TERMS = 16  # words and phrases in one query
MAX_FIELD_CHARS = 200_000  # of one field's text: a long page is still found by its start
SNIPPET_TOKENS = 24  # words around a match in a snippet
HTML_SUFFIXES = (".html", ".htm")
SKIPPED_PAGES = {"genindex.html", "search.html", "py-modindex.html"}  # Sphinx's generated lists
SKIPPED_FOLDERS = ("_static/", "_sources/", "_images/")
# Markers around highlighted words in snippets: control characters that are dropped from
# indexed text, so user content cannot forge them.
MARK_START, MARK_END = "\x02", "\x03"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WORD = re.compile(r"[^\W_]+")  # what both engines index as a word: letters and digits
_TERM = re.compile(r'(?:(?P<field>[A-Za-z]+):)?(?:"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+))')
_INDEX_PATH = re.compile(r"^[^/\s]+/[^/\s]+$")
_ESCAPE = "!"  # LIKE escape; not a backslash: its SQL literal differs between dialects
SCOPES = ("name", "summary", "docs")
KINDS = ("release", "docs", "mirror")

# SQLite: bm25() weights in FTS_COLUMNS' order (app/schema.py creates the FTS5 table).
FTS_WEIGHTS = (10.0, 5.0, 3.0, 2.0, 1.0, 3.0)
FTS_SCOPE = {"name": "{name}", "summary": "{summary}", "docs": "{body title}"}
# PostgreSQL: name A, summary B, keywords and page titles C, description and page text D;
# ts_rank's weights for D, C, B, A. Docs pages rank at half (description > docs).
PG_CONFIG = "english"
PG_WEIGHTS = "{0.1, 0.2, 0.4, 1.0}"
PG_SCOPE = {"name": "A", "summary": "B", "docs": ""}
DOCS_RANK_FACTOR = 0.5


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
    # The renderer lives with the web pages that show it; it imports no Flask itself.
    from app.web.render import render_description

    rendered = render_description(_clean(description), content_type)
    return html_text(str(rendered))[1] if rendered else ""


# --- writing --------------------------------------------------------------------------------


class Blobs(Protocol):
    """The part of app/storage.py's Storage that indexing reads with."""

    def open(self, key: str) -> IO[bytes]:
        """The blob's bytes; FileNotFoundError when it is missing."""
        ...


def _write(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    is_postgresql = session.get_bind().dialect.name == "postgresql"
    for row in rows:
        for field in ("name", "summary", "keywords", "description", "body", "title"):
            row[field] = _clean(row.get(field))
        row.setdefault("updated_at", utcnow())
        if is_postgresql:
            row["tsv"] = _tsvector(row)
    if is_postgresql:  # each row's tsvector is an SQL expression: one INSERT per row
        for row in rows:
            session.execute(insert(SearchDocument).values(**row))
    else:
        session.execute(insert(SearchDocument), rows)


def _tsvector(row: dict[str, Any]) -> Any:
    config: ColumnClause[str] = literal_column(f"'{PG_CONFIG}'::regconfig")

    def weighted(value: str, weight: str) -> Any:
        label: ColumnClause[str] = literal_column(f"'{weight}'")  # a "char", not a parameter
        # Words as FTS5's unicode61 and parse_query see them: PostgreSQL's parser would keep
        # "zope.interface" as one host name and drop "<script>" as a tag.
        words = " ".join(_WORD.findall(fold(value)))
        return func.setweight(func.to_tsvector(config, words), label)

    return (
        weighted(row["name"], "A")
        .op("||")(weighted(row["summary"], "B"))
        .op("||")(weighted(f"{row['keywords']} {row['title']}", "C"))
        .op("||")(weighted(f"{row['description']} {row['body']}", "D"))
    )


def _newest(files: Iterable[File]) -> File | None:
    def key(record: File) -> tuple[int, Version, dt.datetime]:
        try:
            return (1, Version(record.version), record.uploaded_at)
        except InvalidVersion:
            return (0, Version("0"), record.uploaded_at)

    return max(files, key=key, default=None)


def index_project(session: Session, project_id: int) -> None:
    """(Re)index a hosted project from its newest release that is not yanked (a project whose
    every file is yanked is found by its name only); the caller commits."""
    session.execute(
        delete(SearchDocument).where(
            SearchDocument.project_id == project_id, SearchDocument.kind == "release"
        )
    )
    project = session.get(Project, project_id)
    if project is None:
        return
    files = session.scalars(select(File).where(File.project_id == project_id)).all()
    newest = _newest(f for f in files if not f.yanked)
    row: dict[str, Any] = {
        "index_id": project.index_id,
        "project_id": project.id,
        "kind": "release",
        "normalized_name": project.normalized_name,
        "name": project.name,
        "updated_at": max((f.uploaded_at for f in files), default=project.created_at),
    }
    if newest is not None:
        meta = newest.core_metadata or {}
        urls = meta.get("project_urls") or {}
        row |= {
            "version": newest.version,
            "summary": meta.get("summary") or "",
            "keywords": " ".join(
                str(part)
                for part in (
                    meta.get("keywords") or "",
                    *(meta.get("classifiers") or ()),
                    meta.get("author") or "",
                    meta.get("author_email") or "",
                    meta.get("maintainer") or "",
                    *(f"{label} {url}" for label, url in urls.items()),
                )
                if part
            ),
            "description": description_text(
                meta.get("description"), meta.get("description_content_type")
            ),
        }
    _write(session, [row])


def index_mirror_page(session: Session, page: MirrorPage) -> None:
    """(Re)index a project a mirror cached, by its name (an upstream 404 is not indexed)."""
    session.execute(delete(SearchDocument).where(SearchDocument.mirror_page_id == page.id))
    if not page.is_found:
        return
    _write(
        session,
        [
            {
                "index_id": page.index_id,
                "mirror_page_id": page.id,
                "kind": "mirror",
                "normalized_name": page.normalized_name,
                "name": page.name,
                "updated_at": page.fetched_at or utcnow(),
            }
        ],
    )


@dataclasses.dataclass(frozen=True)
class DocsPage:
    """One HTML page of a doc set, as text."""

    path: str  # below the doc set's top folder, as in +doc/PATH
    title: str
    body: str


def read_docs(source: str | IO[bytes], prefix: str) -> list[DocsPage]:
    """The HTML pages of a documentation zip below `prefix` (checked at upload: app/web/docs.py),
    as text; Sphinx's generated index, search page and static files are left out."""
    pages = []
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            name = info.filename.replace("\\", "/")
            if info.is_dir() or not name.startswith(prefix):
                continue
            path = name[len(prefix) :]
            if (
                not path.lower().endswith(HTML_SUFFIXES)
                or path in SKIPPED_PAGES
                or path.startswith(SKIPPED_FOLDERS)
                or ".." in path.split("/")
            ):
                continue
            with archive.open(info) as member:
                page = member.read(MAX_FIELD_CHARS * 4).decode("utf-8", "replace")
            title, body = html_text(page)
            pages.append(DocsPage(path, title, body))
    return pages


def index_docset(session: Session, docset: DocSet, pages: Iterable[DocsPage]) -> int:
    """(Re)index a doc set from its pages (read_docs); return how many; the caller commits."""
    session.flush()  # a new doc set gets its id
    session.execute(delete(SearchDocument).where(SearchDocument.docset_id == docset.id))
    rows = [
        {
            "index_id": docset.index_id,
            "docset_id": docset.id,
            "kind": "docs",
            "normalized_name": docset.normalized_name,
            "version": docset.version,
            "path": page.path,
            "title": page.title,
            "body": page.body,
            "updated_at": docset.uploaded_at,
        }
        for page in pages
    ]
    _write(session, rows)
    return len(rows)


def index_stored_docset(session: Session, blobs: Blobs, docset: DocSet) -> int:
    """(Re)index a doc set from its zip in the blob store; return how many pages."""
    try:
        with blobs.open(docset.sha256) as blob:
            pages = read_docs(blob, docset.path_prefix)
    except (FileNotFoundError, zipfile.BadZipFile, OSError) as exc:  # checked at upload
        log.error(
            "cannot index the docs of %s %s (%s): %s",
            docset.normalized_name,
            docset.version,
            docset.sha256,
            exc,
        )
        return 0
    return index_docset(session, docset, pages)


def reindex(
    session: Session, blobs: Blobs, advance: Callable[[int], None] = lambda _n: None
) -> dict[str, int]:
    """Rebuild the whole index from projects, doc sets and mirror pages, committing as it
    goes; `advance` is called with the number of items done; return counts by kind."""
    session.execute(delete(SearchDocument))
    session.commit()
    counts = dict.fromkeys(KINDS, 0)
    for project_id in session.scalars(select(Project.id).order_by(Project.id)).all():
        index_project(session, project_id)
        session.commit()
        counts["release"] += 1
        advance(1)
    for docset in session.scalars(select(DocSet).order_by(DocSet.id)).all():
        counts["docs"] += index_stored_docset(session, blobs, docset)
        session.commit()
        advance(1)
    pages = select(MirrorPage).where(MirrorPage.is_found.is_(True)).order_by(MirrorPage.id)
    for page in session.scalars(pages).all():
        index_mirror_page(session, page)
        counts["mirror"] += 1
        advance(1)
    session.commit()
    return counts


def reindex_total(session: Session) -> int:
    """How many items reindex() goes through (for its progress bar)."""
    return sum(
        session.scalar(select(func.count()).select_from(table)) or 0
        for table in (Project, DocSet, MirrorPage)
    )


def rebuild(
    settings: Settings, *, progress: bool = True, only_if_empty: bool = False
) -> dict[str, int]:
    """Rebuild the index of the database and blobs `settings` name, with a progress bar (the
    `reindex` command; a restore of a backup made before the index existed); with
    `only_if_empty`, only when the index holds nothing. Return counts by kind."""
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            if only_if_empty and session.scalar(select(SearchDocument.id).limit(1)) is not None:
                return {}
            total = reindex_total(session)
            bar = Progress("reindex", total, unit="items", is_tty=None if progress else False)
            counts = reindex(session, make_storage(settings), bar.advance)
            bar.finish()
    finally:
        database.engine.dispose()
    log.info("search index rebuilt: %s", ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return counts


# --- keeping in step: releases and mirror pages are indexed when their session commits ------

_TOUCHED = "pyshelf.search_touched"


@event.listens_for(Session, "after_flush")
def _note_changes(session: Session, _context: Any) -> None:
    touched = session.info.setdefault(_TOUCHED, (set(), set()))
    projects, pages = touched
    for record in (*session.new, *session.dirty, *session.deleted):
        if isinstance(record, File) and record.project_id is not None:
            projects.add(record.project_id)
        elif isinstance(record, Project) and record.id is not None:
            projects.add(record.id)
        elif isinstance(record, MirrorPage) and record not in session.deleted:
            # A refresh rewrites checked_at: only a new page or a changed name/404 counts.
            attrs = inspect(record).attrs
            if record in session.new or any(
                attrs[name].history.has_changes() for name in ("name", "is_found")
            ):
                pages.add(record.id)


@event.listens_for(Session, "before_commit")
def _index_changes(session: Session) -> None:
    if not session.info.get(_TOUCHED) and not (session.new or session.dirty or session.deleted):
        return
    session.flush()  # runs _note_changes for what is still pending
    projects, pages = session.info.pop(_TOUCHED, (set(), set()))
    for project_id in sorted(projects):
        index_project(session, project_id)
    for page_id in sorted(pages):
        page = session.get(MirrorPage, page_id)
        if page is not None:
            index_mirror_page(session, page)


@event.listens_for(Session, "after_soft_rollback")
def _forget_changes(session: Session, _previous: Any) -> None:
    session.info.pop(_TOUCHED, None)


# --- queries --------------------------------------------------------------------------------


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
        """The unscoped and name: words as a normalized project name (for the exact and
        prefix ranks)."""
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
        words = tuple(w.lower() for w in _WORD.findall(raw))
        if words:
            terms.append(Term(words, raw.rstrip().endswith("*"), scope))
    if len(terms) > MAX_TERMS:
        raise InvalidQuery(f"The search has {len(terms)} words and phrases; at most {MAX_TERMS}.")
    return Query(tuple(terms), tuple(paths))


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


_COMMON_COLUMNS = """
    d.id, d.kind, d.name, d.normalized_name, d.version, d.path, d.title, d.summary,
    u.username || '/' || i.name AS index_path,
    CASE WHEN d.kind = 'docs' THEN 2 WHEN d.normalized_name = :name THEN 0
         WHEN d.normalized_name LIKE :prefix ESCAPE '!' THEN 1 ELSE 2 END AS name_rank"""
_JOINS = """
    JOIN indexes i ON i.id = d.index_id JOIN users u ON u.id = i.owner_id"""

# snippet() tokenizes a row's whole text: only for the rows of the page (SQLITE_SNIPPETS), not
# for every match the ranking has to look at.
SQLITE_SEARCH = f"""
SELECT {_COMMON_COLUMNS}, '' AS snippet
FROM search_fts JOIN search_documents d ON d.id = search_fts.rowid {_JOINS}
WHERE search_fts MATCH :match AND FILTERS
ORDER BY name_rank, bm25(search_fts, {", ".join(map(str, FTS_WEIGHTS))}), d.updated_at DESC, d.id
LIMIT :limit OFFSET :offset"""  # noqa: S608 - constants; input goes in bound parameters

SQLITE_SNIPPETS = f"""
SELECT rowid, snippet(search_fts, -1, :mark_start, :mark_end, '…', {SNIPPET_TOKENS})
FROM search_fts WHERE search_fts MATCH :match AND rowid IN :ids"""  # noqa: S608 - as above

POSTGRESQL_SEARCH = f"""
WITH q AS (SELECT to_tsquery('{PG_CONFIG}', :match) AS q),
hits AS (
    SELECT {_COMMON_COLUMNS}, d.description, d.body,
        ts_rank('{PG_WEIGHTS}', d.tsv, q.q)
            * CASE WHEN d.kind = 'docs' THEN {DOCS_RANK_FACTOR} ELSE 1 END AS score,
        d.updated_at
    FROM search_documents d CROSS JOIN q {_JOINS}
    WHERE d.tsv @@ q.q AND FILTERS
    ORDER BY name_rank, score DESC, d.updated_at DESC, d.id
    LIMIT :limit OFFSET :offset
)
SELECT hits.id, kind, name, normalized_name, version, path, title, summary, index_path, name_rank,
    ts_headline('{PG_CONFIG}', concat_ws(' ', summary, description, title, body), q.q,
        'StartSel=' || :mark_start || ', StopSel=' || :mark_end
        || ', MaxWords={SNIPPET_TOKENS}, MinWords=8, MaxFragments=2, FragmentDelimiter=" … "')
        AS snippet
FROM hits CROSS JOIN q
ORDER BY name_rank, score DESC, updated_at DESC, hits.id"""  # noqa: S608 - as above


def search(
    session: Session,
    query: Query,
    *,
    limit: int,
    offset: int = 0,
    index_ids: Collection[int] | None = None,
) -> list[Hit]:
    """The hits of a parsed query, best first (exact name, name prefix, field weights, most
    recent), at most `limit` from `offset`, only on the indexes `index_ids` (None: every one)."""
    if not query.terms:
        return []
    dialect = session.get_bind().dialect.name
    filters = ["1 = 1"]
    params: dict[str, Any] = {
        "name": query.name,
        "prefix": _like(query.name) + "-%",
        "limit": limit,
        "offset": offset,
        "mark_start": MARK_START,
        "mark_end": MARK_END,
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
        sql, params["match"] = SQLITE_SEARCH, fts_match(query)
    else:
        sql, params["match"] = POSTGRESQL_SEARCH, pg_tsquery(query)
    statement = text(sql.replace("FILTERS", " AND ".join(filters))).bindparams(*expanding)
    try:
        rows = session.execute(statement, params).all()
        snippets = {row.id: row.snippet for row in rows}
        if dialect == "sqlite" and rows:
            found = text(SQLITE_SNIPPETS).bindparams(bindparam("ids", expanding=True))
            ids = list(snippets)
            for row_id, snippet in session.execute(found, {**params, "ids": ids}):
                snippets[row_id] = snippet
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
            snippet=snippets[row.id] or "",
        )
        for row in rows
    ]
