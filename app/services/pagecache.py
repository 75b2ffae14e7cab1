"""Rendered simple pages, stored in the database so that every worker serves the same bytes.

A page is built once (app/http/simple.py) and kept per index, project name and representation
(media type and URL prefix) with its ETag and, for large bodies, a gzipped twin. Database
triggers (migration 0005) forget it when a file, project, mirror page or index it depends on
changes; a page with mirrored data is also good only while the mirror pages it came from are
fresh (`expires_epoch_seconds`). Access control is not cached: a row only says whether every
index the page was made from is public, and anyone else goes through app/http/auth.py's checks.

On PostgreSQL each worker also keeps copies of the rows it read (`Watch`), so that a stored page
costs no round trip to the database: a thread of the worker listens for the notice that every
generation bump sends at commit (migration 0020) and forgets them all, and reads the generation
itself every RECHECK_SECONDS. A copy is served only while that thread has confirmed it within
MAX_STALE_SECONDS: a change committed through any worker or replica shows everywhere within that
bound (in practice as soon as the notice arrives). On SQLite, and whenever the listening
connection is down, every request reads the stored page from the database as before.
"""

from __future__ import annotations

import calendar
import datetime as dt
import gzip
import logging
import os
import select as selectors
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Select, bindparam, case, delete, event, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.data.db import Database, FastRead, OwnConnection, begin_write
from app.data.models import CachedPage, PageCacheState
from app.data.schema import PAGES_CHANNEL

log = logging.getLogger(__name__)

GZIP_MIN_BYTES = 8192  # smaller pages fit in a few packets as they are
GZIP_LEVEL = 1  # hashes (incompressible) are most of a large page: 6 is 8% smaller, 2x slower
PUT_WAIT_MS = 200  # storing a page is optional: a read never waits long for another writer
# flask.g key: the generation a page built in this request may be stored at (app/http/simple.py
# sets it; the mirror moves it past its own page fetch through simple.py's RequestNotes)
REQUEST_GENERATION = "pyshelf_page_generation"
GZIP_SUFFIX = "-gz"  # the gzipped twin is another representation, with its own strong ETag
# Watch: the staleness bound of a worker's copies, how often it reads the generation when no
# notice came (well inside the bound, so that a busy database rarely lets copies lapse), how
# long it waits before listening again after the connection failed, and how many bytes of page
# bodies a worker keeps (oldest copies go first; a larger body is not kept).
MAX_STALE_SECONDS = 1.0
RECHECK_SECONDS = 0.25
RELISTEN_SECONDS = 2.0
COPIES_MAX_BYTES = 32 << 20  # 32 MiB per worker
COPY_MAX_BYTES = COPIES_MAX_BYTES // 8
WATCH_NAME = "pyshelf page watch"  # the listening connection's application_name
GENERATION_SQL = "SELECT generation FROM page_cache_state WHERE id = 1"


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
        self.watch: Watch | None = None  # started by watch_changes

    def get(
        self,
        key: PageKey,
        seen_etags: frozenset[str],
        want_gzip: bool,
        own: OwnConnection | None = None,
    ) -> Hit | None:
        """The stored page, or None when there is none or its mirror data is due for a check.

        `seen_etags` are the client's If-None-Match tags (gzip suffix removed): when the stored
        ETag is among them the body is not even read. With a current `watch`, from this
        worker's copy when it has one, else from the database (on `own` connection when given:
        the event loop's), keeping a copy.
        """
        watch = self.watch
        if watch is None or not watch.is_current():
            seen = next(iter(seen_etags)) if len(seen_etags) == 1 else ""
            row = self._read(key, want_gzip, seen, own)
            return None if row is None else _hit(row, seen_etags, want_gzip)
        copy = watch.copies.get((key, want_gzip))
        if copy is not None:
            return _hit(copy, seen_etags, want_gzip)
        epoch = watch.epoch
        row = self._read(key, want_gzip, "")  # the body too: later requests may need it
        if row is None:
            return None
        watch.keep((key, want_gzip), row, epoch)
        return _hit(row, seen_etags, want_gzip)

    def _read(
        self, key: PageKey, want_gzip: bool, seen: str, own: OwnConnection | None = None
    ) -> tuple[Any, ...] | None:
        read = self.lookups[want_gzip]
        return (read.one if own is None else partial(own.one, read))(
            seen=seen,
            name=key.normalized_name,
            index_path=key.index_path,
            variant=key.variant,
        )

    def watch_changes(self) -> None:
        """Keep copies of stored pages in this process (PostgreSQL only; once per worker process,
        after the fork: app/http/gunicorn_conf.py). Elsewhere nothing changes."""
        if self.database.engine.dialect.name != "postgresql":
            return
        if self.watch is None or self.watch.pid != os.getpid():
            self.watch = Watch(self.database)
            self.watch.start()

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
    """Forget every page (at startup: MIRROR_CACHE_EXPIRY may have changed); caller commits.
    The generation moves on too, so that other replicas' workers forget their copies."""
    session.execute(delete(CachedPage))
    session.execute(update(PageCacheState).values(generation=PageCacheState.generation + 1))


def _hit(row: tuple[Any, ...], seen_etags: frozenset[str], want_gzip: bool) -> Hit | None:
    """A lookup's row as a Hit; None when its mirror data is due for a check, or when the body
    was left out for an ETag that did not match (an If-None-Match with several tags)."""
    etag, has_gzip, cache_control, is_public, expires, data = row
    if expires is not None and expires <= time.time():
        return None
    matched = etag in seen_etags
    if data is None and not matched:
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


class Watch:
    """One worker's copies of stored-page rows, and the thread that forgets them on PostgreSQL's
    notices of a generation bump (migration 0020).

    The thread holds its own connection (autocommit, LISTEN): at every notice it forgets every
    copy; every RECHECK_SECONDS it reads the generation and forgets them too when it moved (a
    notice can only be missed by a broken connection, but the bound must not rest on that), then
    records when that read started: every commit before then is reflected in the copies. A copy
    is served only while that moment is at most MAX_STALE_SECONDS old and no notice is waiting
    unread on the socket. A commit through this process's sessions forgets them at once too.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.copies: dict[tuple[PageKey, bool], tuple[Any, ...]] = {}
        self.size_bytes = 0
        self.epoch = 0  # moves on at every forget: a read that began before is not kept
        self.confirmed_at = float("-inf")  # time.monotonic() of the last check's start
        self.fileno = -1  # the listening connection's socket, while it is up
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pyshelf-page-watch", daemon=True)

    def start(self) -> None:
        """Forget copies at this process's commits, and start listening (a daemon thread)."""
        event.listen(self.database.sessionmaker, "after_commit", self._forget_at_commit)
        self.thread.start()

    def stop(self, wait_seconds: float = 5) -> None:
        """End the thread after its current wait, closing its connection (tests)."""
        self.stopping.set()
        event.remove(self.database.sessionmaker, "after_commit", self._forget_at_commit)
        self.thread.join(wait_seconds)

    def is_current(self) -> bool:
        """Whether copies may be served: checked within the bound, no notice waiting unread."""
        if time.monotonic() - self.confirmed_at > MAX_STALE_SECONDS:
            return False
        fileno = self.fileno
        if fileno < 0:
            return False
        poller = selectors.poll()
        try:
            poller.register(fileno, selectors.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):  # closed meanwhile
            return False

    def keep(self, key: tuple[PageKey, bool], row: tuple[Any, ...], epoch: int) -> None:
        """Keep a row read from the database, unless a forget happened since the read began."""
        data = row[-1]
        size = len(data) if data is not None else 0
        if size > COPY_MAX_BYTES:
            return
        with self.lock:
            if epoch != self.epoch or key in self.copies:
                return
            self.copies[key] = row
            self.size_bytes += size
            while self.size_bytes > COPIES_MAX_BYTES:  # the oldest first (dicts keep order)
                oldest = next(iter(self.copies))
                dropped = self.copies.pop(oldest)[-1]
                self.size_bytes -= len(dropped) if dropped is not None else 0

    def forget(self) -> None:
        """Drop every copy; reads that began before are not kept either."""
        with self.lock:
            self.epoch += 1
            self.copies = {}
            self.size_bytes = 0

    def _forget_at_commit(self, _session: Session) -> None:
        self.forget()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database went away: serve from it until it is back
                log.warning("page cache: listening for changes failed (%s); retrying", exc)
            self.stopping.wait(RELISTEN_SECONDS)

    def _listen(self) -> None:
        import psycopg  # only PostgreSQL's workers get here

        url = self.database.engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        # named in pg_stat_activity, for whoever looks
        with psycopg.connect(conninfo, autocommit=True, application_name=WATCH_NAME) as conn:
            conn.execute(f"LISTEN {PAGES_CHANNEL}")
            self.forget()  # what changed while nobody listened
            self.fileno = conn.fileno()
            try:
                self._follow(conn)
            finally:  # before the socket closes: its number may be reused
                self.confirmed_at = float("-inf")
                self.fileno = -1

    def _follow(self, conn: Any) -> None:
        waiting = selectors.poll()
        waiting.register(self.fileno, selectors.POLLIN)
        generation = None
        while not self.stopping.is_set():
            started = time.monotonic()
            row = conn.execute(GENERATION_SQL).fetchone()
            noticed = False  # notices that came in with the answer wait in psycopg's backlog
            for _notice in conn.notifies(timeout=0):
                noticed = True
            if noticed or row != generation:
                self.forget()
                generation = row
            self.confirmed_at = started
            if waiting.poll(RECHECK_SECONDS * 1000):
                # a notice (or the connection's end): forget before reading it, so that
                # no request serves a copy between its arrival and the forget
                self.forget()
                for _notice in conn.notifies(timeout=0):
                    pass
