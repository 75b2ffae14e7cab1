"""The full-text search index: what is indexed (releases, mirrored projects; doc pages:
app/services/fulltext_docs.py) and how it stays in step, through the `search_jobs` queue
(writing rows on SQLite FTS5 or PostgreSQL tsvector: app/services/fulltext_engines.py;
queries: app/services/search.py).

One row of `search_documents` per project on an index (its newest release that is not
yanked), per HTML page of an uploaded doc set, and per project a mirror cached.

What uploads add is indexed after the response: the upload's transaction writes a row of
`search_jobs` (`queue`), and `drain` indexes the queued items, each in a transaction that deletes
its jobs, so a crash leaves them queued; a server worker's indexer drains once the worker has no
requests (app/services/indexer.py), a search before it looks (app/http/web/search.py), an admin
command before it exits, a server start what a crash left. Queued are: the releases of a session
that adds files (the listeners at the bottom: every writer, present and future, goes through them;
they stay in this module, which every writer imports, so they are registered wherever it runs), an
uploaded doc set (`queue_docset`), a page the mirror stores (`queue_stored_page`). Yanking or
deleting files re-indexes their project in the same transaction, and deleting a project, doc set,
mirror page or index deletes its rows by ON DELETE CASCADE: a hit never outlives what it names. A
file the mirror downloads queues its project in the transaction that records it
(`queue_cached_project`, app/services/mirror/downloads.py), drained as the others are; one it evicts
or a bundle brings is indexed in a transaction of its own (`index_cached_project`, from
app/services/cache.py and app/services/mirror_metadata.py); either way with the summary and
description of the cached metadata that describes it (app/services/mirror_description.py: the web
project page's rule, and only what that mirror holds).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zipfile
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import and_, delete, event, func, inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.progress import Progress
from app.core.storage_choice import make_storage
from app.data.db import Database, begin_write
from app.data.models import (
    DocSet,
    File,
    MirrorFile,
    MirrorHolding,
    MirrorPage,
    Project,
    SearchDocument,
    SearchJob,
    utcnow,
)
from app.services.fulltext_docs import DocsPage, index_docset, index_stored_docset, read_docs
from app.services.fulltext_engines import description_text, write_documents
from app.services.mirror_description import Blobs, describe_page

log = logging.getLogger(__name__)

KINDS = ("release", "docs", "mirror")
DRAIN_MAX_JOBS = 1_000  # items one drain indexes; the rest wait for the next


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
    write_documents(session, [row])


def index_mirror_page(
    session: Session,
    page: MirrorPage,
    *,
    summary: str = "",
    description: str | None = None,
    description_content_type: str | None = None,
) -> None:
    """(Re)index a project a mirror cached: its name, and the summary and description when
    the caller has them from a cached file (an upstream 404 is not indexed)."""
    _write_mirror(session, page, summary, description_text(description, description_content_type))


def _write_mirror(session: Session, page: MirrorPage, summary: str, words: str) -> None:
    session.execute(delete(SearchDocument).where(SearchDocument.mirror_page_id == page.id))
    if not page.is_found:
        return
    row = {
        "index_id": page.index_id,
        "mirror_page_id": page.id,
        "kind": "mirror",
        "normalized_name": page.normalized_name,
        "name": page.name,
        "summary": summary,
        "description": words,
        "updated_at": page.fetched_at or utcnow(),
    }
    write_documents(session, [row])


def _mirror_text(session: Session, blobs: Blobs, page: MirrorPage) -> tuple[str, str]:
    """The summary and description words of the cached metadata that describes a mirrored
    project on its web page (app/services/mirror_description.py: only what this mirror
    holds); reads and renders, writes nothing."""
    meta = describe_page(session, blobs, page)
    if meta is None:
        return "", ""
    return meta.summary or "", description_text(meta.description, meta.description_content_type)


def index_mirror(session: Session, blobs: Blobs, page: MirrorPage) -> None:
    """(Re)index a project a mirror cached, with the summary and description of the cached
    metadata that describes it (`_mirror_text`); the caller commits."""
    session.flush()  # a new page gets its id
    _write_mirror(session, page, *_mirror_text(session, blobs, page))


def _page_changed(session: Session, page: MirrorPage) -> bool:
    """Whether a mirror page being stored changed more than its check time (a refresh with the
    same content changes nothing that is indexed)."""
    attrs = inspect(page).attrs
    return page in session.new or any(
        attrs[name].history.has_changes() for name in ("name", "is_found", "files")
    )


def index_stored_page(session: Session, blobs: Blobs, page: MirrorPage) -> None:
    """(Re)index a mirror page being stored, if it changed; the caller commits."""
    if _page_changed(session, page):
        index_mirror(session, blobs, page)


def queue_stored_page(session: Session, page: MirrorPage) -> None:
    """Queue a mirror page being stored for indexing, if it changed; the caller commits."""
    if _page_changed(session, page):
        session.flush()  # a new page gets its id
        queue(session, "mirror", page.id)


def index_cached_project(
    database: Database, blobs: Blobs, index_id: int, normalized_name: str
) -> None:
    """(Re)index the project of a file mirror `index_id` cached or evicted (another file may
    describe it now), in a transaction of its own; the description is rendered before the
    write lock is taken (a long README takes a tenth of a second), and again under it only if
    what it was read from changed meanwhile."""
    with database.session() as session:
        page = _mirror_page(session, index_id, normalized_name)
        if page is None:
            return
        inputs = _description_inputs(session, page)
        text = _mirror_text(session, blobs, page)
        begin_write(session)
        session.expire_all()  # read what the write lock now protects
        page = _mirror_page(session, index_id, normalized_name)
        if page is None:
            return
        if _description_inputs(session, page) != inputs:
            text = _mirror_text(session, blobs, page)
        _write_mirror(session, page, *text)
        session.commit()


def queue_cached_project(session: Session, index_id: int, normalized_name: str) -> None:
    """Queue the project of a file mirror `index_id` cached for (re)indexing, as
    index_cached_project would do it, in the caller's transaction (nothing when the mirror has
    no page of it); the caller commits, then drains."""
    page_id = session.scalar(
        select(MirrorPage.id).where(
            MirrorPage.index_id == index_id, MirrorPage.normalized_name == normalized_name
        )
    )
    if page_id is not None:
        queue(session, "mirror", page_id)


def _mirror_page(session: Session, index_id: int, normalized_name: str) -> MirrorPage | None:
    return session.scalar(
        select(MirrorPage).where(
            MirrorPage.index_id == index_id, MirrorPage.normalized_name == normalized_name
        )
    )


def _description_inputs(session: Session, page: MirrorPage) -> tuple[Any, ...]:
    """What describe_page reads besides blobs: the page, and the project's cached files with
    their metadata and whether the mirror still holds them."""
    rows = session.execute(
        select(MirrorFile.sha256, MirrorFile.metadata_sha256, MirrorHolding.sha256)
        .outerjoin(
            MirrorHolding,
            and_(
                MirrorHolding.index_id == MirrorFile.index_id,
                MirrorHolding.sha256 == MirrorFile.sha256,
            ),
        )
        .where(
            MirrorFile.index_id == page.index_id,
            MirrorFile.normalized_name == page.normalized_name,
        )
    )
    return (page.id, page.fetched_at, page.is_found, sorted(tuple(row) for row in rows))


# --- the queue: indexing after the response ---------------------------------------------------

# Whether this context (a request's thread) queued something since take_queued() last asked.
_QUEUED: ContextVar[bool] = ContextVar("pyshelf_search_queued", default=False)


def queue(session: Session, kind: str, target_id: int) -> None:
    """Queue a project, docset or mirror page for indexing, in the caller's transaction."""
    session.add(SearchJob(kind=kind, target_id=target_id))
    _QUEUED.set(True)


def take_queued() -> bool:
    """Whether this context queued something since the last call (the web app then drains
    after its response)."""
    queued = _QUEUED.get()
    _QUEUED.set(False)
    return queued


def queue_docset(session: Session, docset: DocSet) -> None:
    """Queue an uploaded doc set for indexing from its zip; the caller commits."""
    session.flush()  # a new doc set gets its id
    queue(session, "docset", docset.id)


def drain(
    database: Database,
    blobs: Blobs,
    max_jobs: int = DRAIN_MAX_JOBS,
    budget_seconds: float | None = None,
) -> int:
    """Index what is queued, oldest first, each item in a write transaction that deletes its
    jobs (two processes never index the same item twice); a doc set's zip is read and parsed
    before the write lock. With `budget_seconds` (a search's catch-up), no item is started
    after it and the write lock is waited for only until then (what is left stays queued).
    Return how many items were indexed: 0 only when nothing was queued (or the budget ran
    out), not for an item another process took first."""
    done = lost = 0
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    with database.session() as session:
        while done < max_jobs and lost <= max_jobs:
            left_ms = None if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left_ms is not None and left_ms <= 0:
                break
            job = session.execute(
                select(SearchJob.id, SearchJob.kind, SearchJob.target_id)
                .order_by(SearchJob.id)
                .limit(1)
            ).first()
            if job is None:
                break
            job_id, kind, target_id = job
            pages = _docset_pages(session, blobs, target_id) if kind == "docset" else None
            try:
                begin_write(session, wait_ms=left_ms)
            except OperationalError:
                if left_ms is None:
                    raise
                session.rollback()
                log.info("search queue: the write lock stayed busy; left to the indexer")
                break
            session.expire_all()  # read what the write lock now protects
            if session.scalar(select(SearchJob.id).where(SearchJob.id == job_id)) is None:
                session.rollback()  # another process indexed it meanwhile: the queue is shorter
                lost += 1
                continue
            session.execute(
                delete(SearchJob).where(SearchJob.kind == kind, SearchJob.target_id == target_id)
            )
            try:
                _index_job(session, blobs, kind, target_id, pages)
            except Exception:  # a bad item must not block the queue; `reindex` retries it
                session.rollback()
                log.exception("cannot index %s %s; left out until a reindex", kind, target_id)
                begin_write(session)
                session.execute(
                    delete(SearchJob).where(
                        SearchJob.kind == kind, SearchJob.target_id == target_id
                    )
                )
            session.commit()
            done += 1
    return done


def _docset_pages(
    session: Session, blobs: Blobs, docset_id: int
) -> tuple[str, str, list[DocsPage]] | None:
    """A doc set's zip and prefix with its pages, read without the write lock (None: gone or
    unreadable, left to index_stored_docset)."""
    docset = session.get(DocSet, docset_id)
    if docset is None:
        return None
    try:
        with blobs.open(docset.sha256) as blob:
            return docset.sha256, docset.path_prefix, read_docs(blob, docset.path_prefix)
    except (FileNotFoundError, zipfile.BadZipFile, OSError):
        return None


def _index_job(
    session: Session,
    blobs: Blobs,
    kind: str,
    target_id: int,
    pages: tuple[str, str, list[DocsPage]] | None,
) -> None:
    if kind == "project":
        index_project(session, target_id)
    elif kind == "docset":
        docset = session.get(DocSet, target_id)
        if docset is None:
            return
        if pages is not None and pages[:2] == (docset.sha256, docset.path_prefix):
            index_docset(session, docset, pages[2])
        else:  # replaced since it was read
            index_stored_docset(session, blobs, docset)
    elif kind == "mirror":
        page = session.get(MirrorPage, target_id)
        if page is not None:
            index_mirror(session, blobs, page)


def drain_queue(settings: Settings) -> int:
    """Index what is queued in the database `settings` name (an admin command, before it
    exits); return how many items."""
    database = Database(settings.database_url)
    try:
        return drain(database, make_storage(settings))
    finally:
        database.engine.dispose()


def reindex(
    session: Session, blobs: Blobs, advance: Callable[[int], None] = lambda _n: None
) -> dict[str, int]:
    """Rebuild the whole index from projects, doc sets and mirror pages, committing as it
    goes; `advance` is called with the number of items done; return counts by kind."""
    session.execute(delete(SearchDocument))
    session.execute(delete(SearchJob))  # everything is indexed below
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
        index_mirror(session, blobs, page)
        session.commit()
        counts["mirror"] += 1
        advance(1)
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
    `only_if_empty`, only when the index holds nothing, else what is queued is indexed (a server
    start: what a crash left). Return counts by kind."""
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            if only_if_empty and session.scalar(select(SearchDocument.id).limit(1)) is not None:
                drained = drain(database, make_storage(settings))
                return {"queued": drained} if drained else {}
            total = reindex_total(session)
            bar = Progress("reindex", total, unit="items", is_tty=None if progress else False)
            counts = reindex(session, make_storage(settings), bar.advance)
            bar.finish()
    finally:
        database.engine.dispose()
    if any(counts.values()):
        log.info("search index rebuilt: %s", ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return counts


# --- keeping in step: releases are queued or indexed when their session commits ------------

_ADDED = "pyshelf.search_added"  # projects with new files or changes: queued
_CHANGED = "pyshelf.search_changed"  # projects with yanked or deleted files: indexed now


@event.listens_for(Session, "after_flush")
def _note_changes(session: Session, _context: Any) -> None:
    added = session.info.setdefault(_ADDED, set())
    changed = session.info.setdefault(_CHANGED, set())
    for record in session.new:
        if isinstance(record, File) and record.project_id is not None:
            added.add(record.project_id)
        elif isinstance(record, Project) and record.id is not None:
            added.add(record.id)
    for record in session.dirty:
        if isinstance(record, File) and record.project_id is not None:
            changed.add(record.project_id)  # a yank: its hit must not wait for the queue
        elif isinstance(record, Project) and record.id is not None:
            added.add(record.id)
    for record in session.deleted:
        if isinstance(record, File) and record.project_id is not None:
            changed.add(record.project_id)
        elif isinstance(record, Project) and record.id is not None:
            changed.add(record.id)


@event.listens_for(Session, "before_commit")
def _index_changes(session: Session) -> None:
    if not (session.info.get(_ADDED) or session.info.get(_CHANGED)) and not (
        session.new or session.dirty or session.deleted
    ):
        return
    session.flush()  # runs _note_changes for what is still pending
    changed = session.info.pop(_CHANGED, set())
    for project_id in sorted(changed):
        index_project(session, project_id)
    for project_id in sorted(session.info.pop(_ADDED, set()) - changed):
        queue(session, "project", project_id)


@event.listens_for(Session, "after_soft_rollback")
def _forget_changes(session: Session, _previous: Any) -> None:
    session.info.pop(_ADDED, None)
    session.info.pop(_CHANGED, None)
