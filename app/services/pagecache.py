"""Rendered simple pages, stored in the database so that every worker serves the same bytes.

A page is built once (app/http/simple.py) and kept per index, project name and representation
(media type and URL prefix) with its ETag and, for large bodies, a gzipped twin. Database
triggers (migration 0005) forget it when a file, project, mirror page or index it depends on
changes; a page with mirrored data is also good only while the mirror pages it came from are
fresh (`expires_epoch_seconds`). Access control is not cached: a row only says whether every
index the page was made from is public, and anyone else goes through app/http/auth.py's checks.
"""

from __future__ import annotations

import calendar
import datetime as dt
import gzip
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, case, delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.data.db import Database, FastRead, begin_write
from app.data.models import CachedPage, PageCacheState

GZIP_MIN_BYTES = 8192  # smaller pages fit in a few packets as they are
GZIP_LEVEL = 1  # hashes (incompressible) are most of a large page: 6 is 8% smaller, 2x slower
PUT_WAIT_MS = 200  # storing a page is optional: a read never waits long for another writer
# flask.g key: the generation a page built in this request may be stored at (app/http/simple.py
# sets it; the mirror moves it past its own page fetch through simple.py's RequestNotes)
REQUEST_GENERATION = "pyshelf_page_generation"
GZIP_SUFFIX = "-gz"  # the gzipped twin is another representation, with its own strong ETag


@dataclass(frozen=True)
class PageKey:
    """Which page: index path (USER/INDEX), normalized project name, representation."""

    index_path: str
    normalized_name: str
    variant: str


@dataclass(frozen=True)
class Hit:
    """A stored page as a request needs it; `body` is None when the client's ETag matched."""

    etag: str  # of the representation to send (with GZIP_SUFFIX when `is_gzip`)
    body: bytes | None
    is_gzip: bool
    has_gzip: bool  # whether the page has a gzipped twin (then Vary: Accept-Encoding)
    cache_control: str
    is_public: bool


def _lookup(want_gzip: bool) -> Select[*tuple[Any, ...]]:
    """One query that reads the body only when the client's ETag does not match."""
    page = CachedPage.__table__.c
    stored = func.coalesce(page.body_gzip, page.body) if want_gzip else page.body
    return select(
        page.etag,
        page.has_gzip,
        page.cache_control,
        page.is_public,
        page.expires_epoch_seconds,
        case((page.etag == bindparam("seen"), None), else_=stored).label("data"),
    ).where(
        page.normalized_name == bindparam("name"),
        page.index_path == bindparam("index_path"),
        page.variant == bindparam("variant"),
    )


class PageCache:
    """Reads and stores rendered pages; one per process, built in create_app."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.lookups = {
            want_gzip: FastRead(database, _lookup(want_gzip)) for want_gzip in (False, True)
        }

    def get(self, key: PageKey, seen_etags: frozenset[str], want_gzip: bool) -> Hit | None:
        """The stored page, or None when there is none or its mirror data is due for a check.

        `seen_etags` are the client's If-None-Match tags (gzip suffix removed): when the stored
        ETag is among them the body is not even read.
        """
        row = self.lookups[want_gzip].one(
            seen=next(iter(seen_etags)) if len(seen_etags) == 1 else "",
            name=key.normalized_name,
            index_path=key.index_path,
            variant=key.variant,
        )
        if row is None:
            return None
        etag, has_gzip, cache_control, is_public, expires, data = row
        if expires is not None and expires <= time.time():
            return None
        matched = etag in seen_etags
        if data is None and not matched:  # an If-None-Match with several tags
            return None
        is_gzip = want_gzip and bool(has_gzip)
        return Hit(
            etag=etag + GZIP_SUFFIX if is_gzip else etag,
            body=None if matched else bytes(data),
            is_gzip=is_gzip,
            has_gzip=bool(has_gzip),
            cache_control=cache_control,
            is_public=bool(is_public),
        )

    def generation(self, session: Session) -> int:
        """The current generation, read in the snapshot that a page is about to be built from."""
        return current_generation(session)

    def put(
        self,
        key: PageKey,
        generation: int,
        *,
        body: bytes,
        etag: str,
        cache_control: str,
        is_public: bool,
        expires_at: dt.datetime | None,
    ) -> bool:
        """Store a page built at `generation`; nothing is stored (False) when anything it may
        depend on changed since, as the triggers then bumped the generation."""
        body_gzip = gzip.compress(body, GZIP_LEVEL) if len(body) >= GZIP_MIN_BYTES else None
        page = CachedPage.__table__.c
        try:
            with self.database.session() as session:
                begin_write(session, wait_ms=PUT_WAIT_MS)
                # FOR UPDATE: a writer's trigger waits for this (PostgreSQL); SQLite's
                # BEGIN IMMEDIATE already keeps every other writer out.
                current = session.scalar(
                    select(PageCacheState.generation)
                    .where(PageCacheState.id == 1)
                    .with_for_update()
                )
                if current != generation:
                    return False
                session.execute(
                    delete(CachedPage).where(
                        page.normalized_name == key.normalized_name,
                        page.index_path == key.index_path,
                        page.variant == key.variant,
                    )
                )
                session.add(
                    CachedPage(
                        normalized_name=key.normalized_name,
                        index_path=key.index_path,
                        variant=key.variant,
                        etag=etag,
                        body=body,
                        has_gzip=body_gzip is not None,
                        body_gzip=body_gzip,
                        cache_control=cache_control,
                        is_public=is_public,
                        expires_epoch_seconds=(
                            None if expires_at is None else calendar.timegm(expires_at.timetuple())
                        ),
                    )
                )
                session.commit()
        except IntegrityError:  # another worker stored the same page first
            return False
        except OperationalError:  # another writer holds the database: serve without storing
            return False
        return True


def current_generation(session: Session, *, for_update: bool = False) -> int:
    """page_cache_state's generation in `session`; `for_update` in a write transaction: no
    other writer bumps it until this one ends (PostgreSQL's row lock; SQLite's BEGIN IMMEDIATE
    already)."""
    query = select(PageCacheState.generation).where(PageCacheState.id == 1)
    return session.scalar(query.with_for_update() if for_update else query) or 0


def clear(session: Session) -> None:
    """Forget every page (at startup: MIRROR_CACHE_EXPIRY may have changed); caller commits."""
    session.execute(delete(CachedPage))
