"""Mirror indexes' caching policy: freshness, stale-if-error, single-flight, hash checks.

Pages are cached in the database (MirrorPage), files in the blob store under their sha256. Work
that must happen once across gunicorn workers (one page fetch per project, one download per
file) is serialized with flock() on files under DATA_DIR/locks: the kernel releases them when
a worker dies, even by SIGKILL. File downloads take app/core/locks.py's named locks, which are
PostgreSQL advisory locks when replicas share the database. Each committed file is recorded in
the cache's accounting (app/services/cache.py: size cap, LRU eviction), and counted for /+metrics.

All indexes share one blob store, and an upstream page may list any sha256 (another index's
private upload, say): a mirror serves only blobs it holds (app/services/cache.py `holds`: it fetched
and verified them itself). Bytes already stored for someone else are downloaded and verified all
the same, then kept as they are (the store deduplicates). When the disk fails a cache write
(full, I/O error), least recently used mirror files are evicted and the write retried once;
after that the download goes on uncached: the client still gets every verified byte.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import errno
import hashlib
import io
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import requests
from flask import Response, g, has_request_context
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse  # redirect()'s; Flask's subclasses it

from app.core.config import Settings
from app.core.dists import InvalidDistribution, parse_filename
from app.core.locks import FileLock, Lock, Locks
from app.core.storage import Storage, write_at
from app.core.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamFile,
    UpstreamNotFound,
    UpstreamTimeout,
    iter_raw,
    mask_url,
)
from app.data.db import Database, begin_write, get_session
from app.data.models import Index, MirrorHolding, MirrorPage, MirrorSidecar, MirrorStats, utcnow
from app.http import metrics
from app.http.errors import DISK_FULL_ERRNOS, HTTPError
from app.http.files import METADATA_MIMETYPE, send_blob
from app.services.cache import MirrorCache, count_fetch, hold, holds
from app.services.fulltext import queue_stored_page
from app.services.indexes import Dist, file_path
from app.services.mirror_metadata import cached_files, extract, record_cached_file, sidecar_of
from app.services.pagecache import REQUEST_GENERATION, current_generation
from app.services.provenance import mirrored_provenance_path
from app.services.status import Marker

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK_BYTES = 1 << 20  # 1 MiB per read from upstream and per write to the client
MAX_METADATA_BYTES = 16 << 20  # 16 MiB: far above any real METADATA file; bounds memory
LOCK_POLL_SECONDS = 0.05
# PostgreSQL: how long a download waits for another replica's (no part file to follow here)
# before it streams the file from upstream itself, uncached: well within clients' timeouts.
REMOTE_WAIT_SECONDS = 10.0
REMOTE_POLL_SECONDS = 0.2  # each look asks the database and the blob store
COUNTER_FLUSH_SECONDS = 5.0
STALE_HEADER = "X-Pyshelf-Stale"
SIDECAR_RECORD_WAIT_MS = 200  # noting a sidecar's key is optional: never wait long for it
MAX_NAME_CHARS = 255  # MirrorPage.normalized_name: longer project names are nowhere upstream
# A cache write failing with these sends the file uncached instead of cutting the download.
CACHE_WRITE_ERRNOS = (*DISK_FULL_ERRNOS, errno.EIO)


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def file_key(entry: dict[str, Any]) -> str:
    """The `+f` key of an upstream file: its sha256, or (unverifiable) the sha256 of its URL."""
    return entry.get("sha256") or hashlib.sha256(entry["url"].encode("utf-8")).hexdigest()


def _forget_unlisted_sidecars(
    session: Session, index_id: int, name: str, files: list[dict[str, Any]]
) -> None:
    """Drop recorded sidecars whose file the new upstream page no longer lists with that
    metadata hash (upstream corrected it, or removed the file); the caller commits."""
    listed = {(file_key(e), e.get("metadata_sha256")) for e in files}
    recorded = session.execute(
        select(MirrorSidecar.dist_sha256, MirrorSidecar.metadata_sha256).where(
            MirrorSidecar.index_id == index_id, MirrorSidecar.normalized_name == name
        )
    ).all()
    gone = [key for key, digest in recorded if (key, digest) not in listed]
    if gone:
        session.execute(
            delete(MirrorSidecar).where(
                MirrorSidecar.index_id == index_id, MirrorSidecar.dist_sha256.in_(gone)
            )
        )


def _note_first_seen(
    old: list[dict[str, Any]], new: list[dict[str, Any]], now: dt.datetime
) -> None:
    """Give each file of a refreshed page when the mirror first saw it: kept from the old page,
    or now for a file new since then. The release cooldown (app/services/guard.py) counts from
    it where the upstream gives no upload-time; files of a project's first fetch have none."""
    seen = {file_key(e): e.get("first_seen_at") for e in old}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for entry in new:
        key = file_key(entry)
        first = seen.get(key, stamp)
        if first:
            entry["first_seen_at"] = first


def age_from(entry: dict[str, Any]) -> dt.datetime | None:
    """When a page entry's cooldown counts from: its upload-time, else its first sighting."""
    return _parse_time(entry.get("upload_time")) or _parse_time(entry.get("first_seen_at"))


def _version(filename: str) -> str | None:
    try:
        return parse_filename(filename).version
    except InvalidDistribution:
        return None  # eggs, .exe and other files installers cannot use: never listed


def _entry(file: UpstreamFile) -> dict[str, Any]:
    """A file as MirrorPage.files keeps it: parsed once here, not on every page build."""
    return {
        "filename": file.filename,
        "version": _version(file.filename),
        "url": file.url,
        "sha256": file.sha256,
        "requires_python": file.requires_python,
        "yanked": file.yanked,
        "upload_time": file.upload_time,
        "size": file.size,
        # Only a sidecar with a hash is advertised: it can be verified before it is served.
        "metadata_sha256": file.core_metadata if isinstance(file.core_metadata, str) else None,
        "provenance": file.provenance,  # PEP 740: proxied at +provenance (app/http/provenance.py)
    }


class Counters:
    """Hits, misses and bytes fetched, added up in this process and flushed to the database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.lock = threading.Lock()
        self.pending: dict[int, list[int]] = {}
        self.flushed_at = time.monotonic()
        # Hits counted since the last flush would be lost when gunicorn stops or recycles the
        # worker; a weak reference lets tests' short-lived apps go away.
        atexit.register(_flush_at_exit, weakref.ref(self))

    def add(self, index_id: int, *, hits: int = 0, misses: int = 0, fetched_bytes: int = 0) -> None:
        """Count an event; flush now and then so every worker's counts reach the database."""
        metrics.count_cache(hits=hits, misses=misses, fetched_bytes=fetched_bytes)
        with self.lock:
            row = self.pending.setdefault(index_id, [0, 0, 0])
            row[0] += hits
            row[1] += misses
            row[2] += fetched_bytes
            due = time.monotonic() - self.flushed_at >= COUNTER_FLUSH_SECONDS or misses
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the pending counts (one short transaction)."""
        with self.lock:
            pending, self.pending = self.pending, {}
            self.flushed_at = time.monotonic()
        if not pending:
            return
        try:
            with self.database.session() as session:
                begin_write(session)
                for index_id, (hits, misses, fetched) in pending.items():
                    _stats_row(session, index_id)
                    session.execute(
                        update(MirrorStats)
                        .where(MirrorStats.index_id == index_id)
                        .values(
                            hits=MirrorStats.hits + hits,
                            misses=MirrorStats.misses + misses,
                            bytes_fetched=MirrorStats.bytes_fetched + fetched,
                        )
                    )
                session.commit()
        except Exception:  # counters must never break a download
            log.exception("could not write mirror counters")


def _flush_at_exit(counters: weakref.ref[Counters]) -> None:
    alive = counters()
    if alive is not None:
        alive.flush()


def _stats_row(session: Session, index_id: int) -> MirrorStats:
    row = session.get(MirrorStats, index_id)
    if row is None:
        row = MirrorStats(index_id=index_id, hits=0, misses=0, bytes_fetched=0)
        session.add(row)
        session.flush()
    return row


class Mirror:
    """Serves mirror indexes: project pages and files, fetched once and cached."""

    def __init__(
        self, settings: Settings, database: Database, storage: Storage, upstream: UpstreamClient
    ) -> None:
        self.settings = settings
        self.database = database
        self.storage = storage
        self.upstream = upstream
        self.lock_dir = Path(settings.data_dir) / "locks"
        self.part_dir = settings.tmp_dir / "mirror"
        self.locks = Locks.of(settings)  # downloads: one per file across workers and replicas
        self.counters = Counters(database)
        self.cache = MirrorCache(settings, database, storage)

    # --- pages -------------------------------------------------------------------------------

    def _expiry_seconds(self, index: Index) -> int:
        if index.mirror_cache_expiry is not None:
            return index.mirror_cache_expiry
        return self.settings.mirror_cache_expiry_seconds

    def _is_fresh(self, index: Index, page: MirrorPage, now: dt.datetime) -> bool:
        if page.checked_at is None:
            return False
        ttl = (
            self._expiry_seconds(index) if page.is_found else self.settings.mirror_not_found_seconds
        )
        return (now - page.checked_at).total_seconds() < ttl

    def _read(self, index: Index, name: str) -> MirrorPage | None:
        """Load a page in a fresh session: the request's may hold an older snapshot (WAL)."""
        with self.database.session() as session:
            return self._load(session, index, name)

    def _load(self, session: Session, index: Index, name: str) -> MirrorPage | None:
        return session.scalar(
            select(MirrorPage).where(
                MirrorPage.index_id == index.id, MirrorPage.normalized_name == name
            )
        )

    def page(self, index: Index, name: str) -> MirrorPage | None:
        """The cached page of `name`, fetched or revalidated when stale; None if upstream lacks it.

        Raises UpstreamError only when upstream fails with nothing cached (RFC 5861 stale-if-error).
        """
        if len(name) > MAX_NAME_CHARS:  # no row could hold it (PostgreSQL enforces the limit)
            return None
        page = self._read(index, name)
        if index.is_offline:  # never a network: what bundles brought, fresh until the next one
            return page if page is not None and page.is_found else None
        now = utcnow()
        if page is not None and self._is_fresh(index, page, now):
            return page if page.is_found else None
        # The name comes from the URL: hashed, a NUL or a 300-character name is a valid lock.
        name_key = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        lock = FileLock(self.lock_dir / f"page-{index.id}-{name_key}.lock")
        try:
            if not lock.acquire(self._upstream_budget_seconds()):
                if page is not None:
                    return self._stale(index, page, "another worker is still fetching it")
                raise UpstreamTimeout(f"another worker is still fetching {name}")
            # Another worker may have fetched it while we waited for the lock.
            page = self._read(index, name)
            if page is not None and self._is_fresh(index, page, utcnow()):
                return page if page.is_found else None
            return self._fetch(index, name, page)
        finally:
            lock.close()

    def _upstream_budget_seconds(self) -> float:
        """How long one upstream request may take with all its retries: what a waiter allows."""
        settings = self.settings
        attempts = settings.upstream_retries + 1
        per_attempt = (
            settings.upstream_connect_timeout_seconds + settings.upstream_read_timeout_seconds
        )
        backoff = getattr(self.upstream, "backoff_seconds", 0.5) * (2**settings.upstream_retries)
        return per_attempt * attempts + backoff

    def _stale(self, index: Index, page: MirrorPage, why: str) -> MirrorPage | None:
        log.warning("serving stale %s/%s: %s", index.path, page.normalized_name, why)
        g.setdefault("pyshelf_stale", set()).add(index.path)
        return page if page.is_found else None

    def _fetch(self, index: Index, name: str, page: MirrorPage | None) -> MirrorPage | None:
        url = index.mirror_url or ""
        etag = page.etag if page is not None and page.is_found else None
        last_modified = page.last_modified if page is not None and page.is_found else None
        try:
            fetched = self.upstream.fetch_project(url, name, etag=etag, last_modified=last_modified)
        except UpstreamNotFound:
            return self._save(index, name, None)
        except UpstreamError as exc:
            self._note_upstream(index, str(exc))
            if page is not None:
                return self._stale(index, page, str(exc))
            log.error("upstream %s failed for %s: %s", mask_url(url), name, exc)
            raise
        if fetched is None:  # 304 Not Modified: the cached page is fresh again
            return self._save(index, name, "not-modified")
        return self._save(index, name, fetched)

    def _save(self, index: Index, name: str, fetched: Any) -> MirrorPage | None:
        """Store what the upstream answered, and that it answered, in one transaction."""
        with self.database.session() as session:
            begin_write(session)
            before = current_generation(session, for_update=True)
            page = self._load(session, index, name)
            now = utcnow()
            _stats_row(session, index.id).last_ok_at = now
            if page is None:
                page = MirrorPage(index_id=index.id, normalized_name=name, name=name, files=[])
                session.add(page)
            page.checked_at = now
            if fetched is None:
                page.is_found = False
                page.files = []
                page.status = page.status_reason = None
                page.etag = page.last_modified = None
                page.fetched_at = now
            elif fetched != "not-modified":
                files = [_entry(f) for f in fetched.files]
                if page.is_found and page.files:
                    _note_first_seen(page.files, files, now)
                page.is_found = True
                page.name = fetched.name or name
                page.files = files
                page.status = fetched.status  # PEP 792, passed through to this mirror's pages
                page.status_reason = fetched.status_reason if fetched.status else None
                page.etag = fetched.etag
                page.last_modified = fetched.last_modified
                page.fetched_at = now
            if fetched != "not-modified":
                queue_stored_page(session, page)
                _forget_unlisted_sidecars(session, index.id, name, page.files)
            after = current_generation(session)  # flushed first: with this save's bumps
            session.commit()
        # Nothing but this save changed since the request read `before`: the page it builds
        # from what it just stored may be stored at `after` (else it is built again next time).
        if has_request_context() and g.get(REQUEST_GENERATION) == before:
            setattr(g, REQUEST_GENERATION, after)
        return page if page.is_found else None

    def _note_upstream(self, index: Index, error: str) -> None:
        """Record an upstream failure (a success is recorded with what it brought, in _save)."""
        metrics.count_upstream_error(index.path)
        try:
            with self.database.session() as session:
                begin_write(session)
                row = _stats_row(session, index.id)
                row.last_error, row.last_error_at = error[:1000], utcnow()
                session.commit()
        except Exception:
            log.exception("could not record upstream state of %s", index.path)

    def refresh(self, index: Index, name: str) -> bool:
        """Mark a cached page stale so the next request revalidates it; False if none was cached."""
        with self.database.session() as session:
            begin_write(session)
            page = self._load(session, index, name)
            if page is None:
                return False
            page.checked_at = None
            session.commit()
        return True

    # --- what indexes.py asks ------------------------------------------------------------------

    def project(self, index: Index, normalized_name: str) -> tuple[str, list[Dist]] | None:
        """The upstream project's name and files as local `+f` links, or None if unknown."""
        page = self.page(index, normalized_name)
        if page is None:
            return None
        dists = []
        index_path = index.path
        # A fresh session, as _read: the file may have been cached a moment ago by another worker.
        keys = [entry["sha256"] for entry in page.files if entry.get("sha256")]
        with self.database.session() as session:
            cached = cached_files(session, index.id, normalized_name, keys)
        for entry in page.files:
            # Pages saved before versions were stored with them are parsed here.
            version = entry["version"] if "version" in entry else _version(entry["filename"])
            if version is None:
                continue
            # What the mirror cached it knows first-hand: the size of the bytes it verified and
            # the METADATA inside a wheel (the PEP 658 sidecar, even where upstream has none).
            held = cached.get(entry["sha256"]) if entry.get("sha256") else None
            dists.append(
                Dist(
                    filename=entry["filename"],
                    path=file_path(index_path, file_key(entry), entry["filename"]),
                    version=version,
                    sha256=entry.get("sha256"),
                    size=held.size if held else entry.get("size"),
                    requires_python=entry.get("requires_python"),
                    yanked=entry.get("yanked") or False,
                    upload_time=_parse_time(entry.get("upload_time")),
                    metadata_sha256=(
                        held.metadata_sha256
                        if held and held.is_sidecar
                        else entry.get("metadata_sha256")
                    ),
                    index_path=index_path,
                    age_from=age_from(entry),
                    provenance=mirrored_provenance_path(index_path, entry),
                )
            )
        return page.name, dists

    def project_status(self, index: Index, normalized_name: str) -> Marker | None:
        """The upstream's PEP 792 status as last fetched (a fresh session, as _read), or None."""
        with self.database.session() as session:
            row = session.execute(
                select(MirrorPage.status, MirrorPage.status_reason).where(
                    MirrorPage.index_id == index.id,
                    MirrorPage.normalized_name == normalized_name,
                    MirrorPage.is_found.is_(True),
                )
            ).first()
        if row is None or row[0] is None:
            return None
        return Marker(row[0], row[1], index.path)

    def file_age_from(self, index: Index, name: str, key: str, filename: str) -> dt.datetime | None:
        """When the cooldown of a mirrored file counts from, by the stored page (never fetched
        here: the page that listed the file is the one its URL came from); None: old."""
        page = self._read(index, name)
        for entry in page.files if page is not None else ():
            if entry["filename"] == filename and file_key(entry) == key:
                return age_from(entry)
        return None

    def expires_at(self, indexes: list[Index], normalized_name: str) -> dt.datetime | None:
        """When the first of these mirrors' cached pages of the name is due for a check (None:
        no mirror among them has one); what a page built from them is good for."""
        mirrors = {i.id: i for i in indexes if i.is_mirror and not i.is_offline}
        if not mirrors:
            return None
        with self.database.session() as session:
            rows = session.execute(
                select(MirrorPage.index_id, MirrorPage.checked_at, MirrorPage.is_found).where(
                    MirrorPage.index_id.in_(mirrors), MirrorPage.normalized_name == normalized_name
                )
            ).all()
        due: dt.datetime | None = None
        for index_id, checked_at, is_found in rows:
            if checked_at is None:  # refreshed: due now
                return utcnow()
            ttl = (
                self._expiry_seconds(mirrors[index_id])
                if is_found
                else self.settings.mirror_not_found_seconds
            )
            at = checked_at + dt.timedelta(seconds=ttl)
            due = at if due is None else min(due, at)
        return due

    def project_names(self, index: Index) -> list[str]:
        """Names of the projects this mirror has cached (it never fetches the upstream list)."""
        return list(
            get_session().scalars(
                select(MirrorPage.name).where(
                    MirrorPage.index_id == index.id, MirrorPage.is_found.is_(True)
                )
            )
        )

    # --- files ---------------------------------------------------------------------------------

    def serve_file(
        self, index: Index, key: str, filename: str, *, is_metadata: bool, is_head: bool = False
    ) -> BaseResponse:
        """A mirrored file (or its sidecar): from the cache, or streamed from upstream into it.

        HEAD of a file not cached yet answers from the page without starting a download.
        """
        try:
            name = parse_filename(filename).normalized_name
        except InvalidDistribution:
            raise HTTPError(404, f"No such file on {index.path}: {filename}") from None
        if not is_metadata and self._is_cached_here(index, key):
            # The sha256 in the URL names the bytes: no need to decode the project's page.
            return self._send_cached(index, key, filename)
        sidecar = self._cached_sidecar(index, key, filename) if is_metadata else None
        if sidecar is not None:
            return self._send_cached(
                index, sidecar, f"{filename}.metadata", mimetype=METADATA_MIMETYPE
            )
        if index.is_offline:  # what it holds was served above; it fetches nothing
            raise HTTPError(404, f"{filename} is not in this offline mirror {index.path}.")
        try:
            page = self.page(index, name)
        except UpstreamTimeout as exc:
            raise HTTPError(504, f"Upstream timed out: {exc}", {"Retry-After": "30"}) from None
        except UpstreamError as exc:
            raise HTTPError(502, f"Upstream failed: {exc}", {"Retry-After": "30"}) from None
        entry = next(
            (
                e
                for e in (page.files if page else [])
                if e["filename"] == filename and file_key(e) == key
            ),
            None,
        )
        if entry is None:
            raise HTTPError(404, f"No such file on {index.path}: {filename}")
        if is_metadata:
            return self._serve_metadata(index, entry)
        if entry.get("sha256") and self._is_cached_here(index, key):
            return self._send_cached(index, key, filename)
        if is_head:
            response = Response(b"", mimetype="application/octet-stream")
            if entry.get("size") is not None:
                response.headers["Content-Length"] = str(entry["size"])
            response.headers["Cache-Control"] = "no-store"  # no ranges until it is cached
            return response
        return self._download(index, entry)

    def _is_cached_here(self, index: Index, key: str) -> bool:
        """Whether this mirror holds the blob `key` (fetched it itself) and the store has it."""
        return holds(get_session(), index.id, key) and self.storage.exists(key)

    def _holds_now(self, index: Index, key: str) -> bool:
        """_is_cached_here in a fresh session: another worker may have committed it just now."""
        with self.database.session() as session:
            return holds(session, index.id, key) and self.storage.exists(key)

    def _cached_sidecar(self, index: Index, key: str, filename: str) -> str | None:
        """The sidecar of this mirror's file `key`: the METADATA extracted when it cached the
        wheel, else the upstream's one recorded; if it holds it and it is stored."""
        session = get_session()
        digest = sidecar_of(session, index.id, key, filename) or session.scalar(
            select(MirrorSidecar.metadata_sha256)
            .join(
                MirrorHolding,
                (MirrorHolding.index_id == MirrorSidecar.index_id)
                & (MirrorHolding.sha256 == MirrorSidecar.metadata_sha256),
            )
            .where(
                MirrorSidecar.index_id == index.id,
                MirrorSidecar.dist_sha256 == key,
                MirrorSidecar.filename == filename,
            )
        )
        return digest if digest is not None and self.storage.exists(digest) else None

    def _remember_sidecar(self, index: Index, entry: dict[str, Any], digest: str) -> None:
        """Record which sidecar `entry` has, so the next request finds it by the file's key.

        Optional work: skipped when another writer holds the database for long.
        """
        try:
            with self.database.session() as session:
                begin_write(session, wait_ms=SIDECAR_RECORD_WAIT_MS)
                session.merge(
                    MirrorSidecar(
                        index_id=index.id,
                        dist_sha256=file_key(entry),
                        filename=entry["filename"],
                        normalized_name=parse_filename(entry["filename"]).normalized_name,
                        metadata_sha256=digest,
                    )
                )
                session.commit()
        except (IntegrityError, OperationalError):  # recorded by another worker, or busy
            pass

    def _record_sidecar(self, index: Index, entry: dict[str, Any], digest: str, size: int) -> None:
        """Record a fetched and stored sidecar: held by this mirror, its miss counted, and which
        file it belongs to, in one transaction (else one step at a time, as each allows)."""
        try:
            with self.database.session() as session:
                begin_write(session)
                hold(session, index.id, digest, size)
                count_fetch(session, index.id, size)
                session.merge(
                    MirrorSidecar(
                        index_id=index.id,
                        dist_sha256=file_key(entry),
                        filename=entry["filename"],
                        normalized_name=parse_filename(entry["filename"]).normalized_name,
                        metadata_sha256=digest,
                    )
                )
                session.commit()
        except (IntegrityError, OperationalError):  # another worker noted the sidecar first
            self.counters.add(index.id, misses=1, fetched_bytes=size)
            self.cache.record(index.id, digest, size)
            self._remember_sidecar(index, entry, digest)
            return
        metrics.count_cache(misses=1, fetched_bytes=size)

    def _serve_metadata(self, index: Index, entry: dict[str, Any]) -> BaseResponse:
        """The PEP 658 sidecar: fetched once per mirror, verified against the advertised sha256,
        cached (bytes stored already for another index are kept, never served unfetched)."""
        digest = entry.get("metadata_sha256")
        name = entry["filename"] + ".metadata"
        if not digest:
            raise HTTPError(404, f"Upstream offers no core metadata for {entry['filename']}.")
        mimetype = METADATA_MIMETYPE
        if self._is_cached_here(index, digest):
            self._remember_sidecar(index, entry, digest)
            return self._send_cached(index, digest, name, mimetype=mimetype)
        lock = self.locks.exclusive(f"meta-{index.id}-{digest}")
        try:  # one fetch per sidecar and mirror across workers (uv asks for many at once)
            if not lock.acquire(self._upstream_budget_seconds()):
                raise HTTPError(504, f"{name} is still being fetched by another worker.")
            if self._holds_now(index, digest):
                return self._send_cached(index, digest, name, mimetype=mimetype)
            data = self._fetch_metadata(index, entry["url"] + ".metadata", name)
            if hashlib.sha256(data).hexdigest() != digest:
                log.error("hash mismatch for %s from %s: not cached", name, mask_url(entry["url"]))
                metrics.count_upstream_error(index.path)
                raise HTTPError(502, f"Upstream sent {name} with the wrong sha256; not served.")
            if not self._save_sidecar(index, digest, data, name):
                self.counters.add(index.id, misses=1, fetched_bytes=len(data))
                response = Response(data, mimetype=mimetype)
                response.headers["Cache-Control"] = "no-store"
                return response
            self._record_sidecar(index, entry, digest, len(data))
        finally:
            lock.close()
        self.cache.evict_if_over()
        return send_blob(digest, name, mimetype=mimetype)

    def _save_sidecar(self, index: Index, digest: str, data: bytes, name: str) -> bool:
        """Store verified sidecar bytes, unless stored already; False when the disk refused them
        (after evicting to make room, once): the caller then sends them uncached."""
        for attempt in range(2):
            try:
                if not self.storage.exists(digest):  # another index's identical bytes stay
                    self.storage.save(digest, io.BytesIO(data))
                return True
            except OSError as exc:
                if exc.errno not in CACHE_WRITE_ERRNOS:
                    raise
                failure = exc
            if (
                attempt
                or failure.errno not in DISK_FULL_ERRNOS
                or not self.cache.make_room(len(data))
            ):
                break
        _count_write_failure("metadata", f"{index.path}: {name}", failure)
        return False

    def _send_cached(
        self, index: Index, key: str, filename: str, *, mimetype: str = "application/octet-stream"
    ) -> BaseResponse:
        """A cache hit: counted, its last access noted (in batches), the blob sent."""
        self.counters.add(index.id, hits=1)
        self.cache.touch(key)
        metrics.mark_cache_hit()
        return send_blob(key, filename, mimetype=mimetype)

    def _fetch_metadata(self, index: Index, url: str, name: str) -> bytes:
        try:
            response = self.upstream.open_file(url, simple_url=index.mirror_url)
            with contextlib.closing(response):
                data = bytearray()
                for chunk in iter_raw(response):
                    data += chunk
                    if len(data) > MAX_METADATA_BYTES:
                        raise UpstreamError(f"{name} is larger than {MAX_METADATA_BYTES} bytes")
        except UpstreamTimeout as exc:
            metrics.count_upstream_error(index.path)
            raise HTTPError(504, f"Upstream timed out fetching {name}: {exc}") from None
        except UpstreamError as exc:
            log.error("fetching %s from %s failed: %s", name, mask_url(url), exc)
            metrics.count_upstream_error(index.path)
            raise HTTPError(502, f"Upstream failed fetching {name}: {exc}") from None
        return bytes(data)

    def _part_paths(self, index: Index, key: str) -> tuple[Path, Path]:
        """A download's part file and size note: one per mirror and file (a mirror never sends
        bytes another mirror is fetching: they are not its own until it verified them)."""
        stem = f"{index.id}-{key}"
        return self.part_dir / f"{stem}.part", self.part_dir / f"{stem}.size"

    def _download(self, index: Index, entry: dict[str, Any]) -> BaseResponse:
        """Stream a file from upstream to the client while caching it; one download per file
        and mirror.

        Whoever takes the file's lock leads: it downloads and caches. A follower on this machine
        streams the leader's part file as it grows. With PostgreSQL a follower whose leader is
        on another replica (no part file here) serves the cached file once it is committed, or
        after REMOTE_WAIT_SECONDS streams it from upstream itself, uncached.
        """
        if not entry.get("sha256"):
            return self._pass_through(index, entry)
        key, filename = file_key(entry), entry["filename"]
        part, _size = self._part_paths(index, key)
        # The leader creates the part file once upstream answers, which may take every retry.
        started = time.monotonic()
        deadline = started + self._upstream_budget_seconds()
        is_distributed = self.locks.is_distributed
        while True:
            lock = self.locks.exclusive(f"file-{index.id}-{key}")
            if lock.try_acquire():
                if self._holds_now(index, key):
                    lock.close()  # another worker just finished it
                    return self._send_cached(index, key, filename)
                return self._lead(index, entry, lock)
            lock.close()
            if part.exists():
                return self._follow(index, entry, part)
            if not is_distributed:
                if time.monotonic() >= deadline:
                    return self._follow(index, entry, part)
                time.sleep(LOCK_POLL_SECONDS)
                continue
            if self._holds_now(index, key):  # committed by another replica, which unlocks next
                return self._send_cached(index, key, filename)
            if time.monotonic() - started >= REMOTE_WAIT_SECONDS:
                log.info("%s: another replica is fetching it, streamed uncached", filename)
                return self._pass_through(index, entry)
            time.sleep(REMOTE_POLL_SECONDS)

    def _open_upstream(self, index: Index, entry: dict[str, Any]) -> requests.Response:
        try:
            return self.upstream.open_file(entry["url"], simple_url=index.mirror_url)
        except UpstreamTimeout as exc:
            log.error("fetching %s failed: %s", entry["filename"], exc)
            metrics.count_upstream_error(index.path)
            raise HTTPError(
                504, f"Upstream timed out fetching {entry['filename']}: {exc}"
            ) from None
        except UpstreamError as exc:
            log.error("fetching %s failed: %s", entry["filename"], exc)
            metrics.count_upstream_error(index.path)
            raise HTTPError(502, f"Upstream failed fetching {entry['filename']}: {exc}") from None

    def _pass_through(
        self,
        index: Index,
        entry: dict[str, Any],
        upstream_response: requests.Response | None = None,
    ) -> Response:
        """Streamed from upstream, never cached: a file listed without a sha256 (PEP 503), one
        another replica is still downloading, or one the disk has no room for. A known sha256 is
        checked before the last chunk."""
        if upstream_response is None:
            upstream_response = self._open_upstream(index, entry)
        filename, counters, verify = entry["filename"], self.counters, entry.get("sha256")
        if not verify:
            log.warning("%s has no upstream sha256: streamed, not cached", filename)

        def generate() -> Iterator[bytes]:
            size, digest, held = 0, hashlib.sha256(), b""
            try:
                for chunk in iter_raw(upstream_response, chunk_bytes=CHUNK_BYTES):
                    size += len(chunk)
                    if verify:
                        digest.update(chunk)
                    if held:
                        yield held
                    held = chunk
                if verify and digest.hexdigest() != verify:
                    raise UpstreamError(f"{filename}: sha256 {digest.hexdigest()} != {verify}")
                if held:
                    yield held
                counters.add(index.id, misses=1, fetched_bytes=size)
            except UpstreamError as exc:
                log.error("mirror download of %s failed: %s", filename, exc)
                raise
            finally:
                upstream_response.close()

        response = Response(generate(), mimetype="application/octet-stream")
        response.call_on_close(upstream_response.close)  # HEAD: the body is never iterated
        length = upstream_response.headers.get("Content-Length")
        if length and length.isdigit():
            response.headers["Content-Length"] = length
        response.headers["Cache-Control"] = "no-store"
        return response

    def _new_part(self, part_path: Path, size_path: Path, total: int | None) -> IO[bytes]:
        """A new, empty part file (unbuffered: followers read each chunk as it is written) and
        its size note; nothing is left when either cannot be written."""
        self.part_dir.mkdir(parents=True, exist_ok=True)
        # A new inode, never the old one truncated: a follower still reading a part left by
        # a killed or failed leader must not see its bytes change under it.
        part_path.unlink(missing_ok=True)
        part: IO[bytes] = open(part_path, "x+b", buffering=0)  # noqa: SIM115 - the caller closes
        try:
            if total is not None:
                size_path.write_text(str(total))
            else:
                size_path.unlink(missing_ok=True)
        except BaseException:
            part.close()
            part_path.unlink(missing_ok=True)
            size_path.unlink(missing_ok=True)
            raise
        return part

    def _lead(self, index: Index, entry: dict[str, Any], lock: Lock) -> Response:
        """Download a file for every worker of this mirror: write its part file, verify, commit
        it to the store (bytes stored already for anyone are kept as they are), record that this
        mirror holds it.

        A cache write failing for a full disk evicts least recently used mirror files and is
        tried once more; when it fails again (or with EIO) the part file is dropped and the file
        is sent on uncached, still checked before its last byte, and the failure is counted.
        """
        key, verify, filename = file_key(entry), entry["sha256"], entry["filename"]
        try:
            upstream_response = self._open_upstream(index, entry)
        except BaseException:
            lock.close()
            raise
        part_path, size_path = self._part_paths(index, key)
        length = upstream_response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else entry.get("size")
        try:
            part = self._with_room(lambda: self._new_part(part_path, size_path, total), total or 0)
        except OSError as exc:
            lock.close()
            if exc.errno not in CACHE_WRITE_ERRNOS:
                upstream_response.close()
                raise
            _count_write_failure("mirror", f"{index.path}: {filename}", exc)
            return self._pass_through(index, entry, upstream_response)
        except BaseException:
            upstream_response.close()
            lock.close()
            raise
        storage, counters, cache = self.storage, self.counters, self.cache
        database, index_id = self.database, index.id
        is_caching, has_made_room, is_dropped = True, False, False

        def drop_part() -> None:
            """Free the part file and the lock; once, whatever ends (or the disk failed)."""
            nonlocal is_dropped
            if is_dropped:
                return
            is_dropped = True
            part.close()
            # Gone already when the store committed it by rename; a copy (save()), a stored
            # copy kept, or a failure leaves it. Nobody else writes this path while we hold
            # the lock.
            part_path.unlink(missing_ok=True)
            size_path.unlink(missing_ok=True)
            lock.close()

        def release() -> None:
            """Free the upstream connection, the part file and the lock."""
            upstream_response.close()
            drop_part()

        def stop_caching(exc: OSError) -> None:
            """The disk refused the bytes: nothing partial stays, the client still gets them."""
            nonlocal is_caching
            if exc.errno not in CACHE_WRITE_ERRNOS:
                raise exc
            is_caching = False
            _count_write_failure("mirror", f"{index.path}: {filename}", exc)
            drop_part()  # followers see the leader gone and the file not held: they stop

        def write(chunk: bytes, offset: int) -> None:
            nonlocal has_made_room
            try:
                write_at(part, offset, chunk)
                return
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS or has_made_room:
                    raise
            has_made_room = True  # one eviction per download: it frees the whole rest
            if not cache.make_room((total or offset + len(chunk)) - offset):
                raise OSError(errno.ENOSPC, "disk full, and no mirror files to evict")
            write_at(part, offset, chunk)

        def commit() -> None:
            os.fsync(part.fileno())
            if storage.exists(key):
                return  # stored already (an upload's, another mirror's): the bytes are proven
            storage.commit_temp(key, part_path)

        def generate() -> Iterator[bytes]:
            is_client_gone = False
            try:
                # Only the sha256 is checked: md5 and blake2b (uploads keep them) would cut the
                # first download's speed by three.
                digest, size, held = hashlib.sha256(), 0, b""
                for chunk in iter_raw(upstream_response, chunk_bytes=CHUNK_BYTES):
                    if is_caching:
                        try:
                            write(chunk, size)  # followers read the part file as it grows
                        except OSError as exc:
                            stop_caching(exc)
                    digest.update(chunk)
                    size += len(chunk)
                    if held and not is_client_gone:
                        try:
                            yield held
                        except GeneratorExit:
                            # The first client left: finish the download anyway, so followers
                            # and pip's resumed retry get the file (no more yields from here).
                            is_client_gone = True
                    if is_client_gone and not is_caching:
                        return  # nobody waits for these bytes any more
                    held = chunk
                # The last chunk is held back until the bytes are proven right: a client
                # never receives a complete wrong file, only a cut-off one.
                if total is not None and size != total:
                    raise UpstreamError(f"{filename}: got {size} of {total} bytes")
                if digest.hexdigest() != verify:
                    raise UpstreamError(
                        f"{filename}: sha256 {digest.hexdigest()} != expected {verify}"
                    )
                # Read from the part file before the store takes it (by rename, or to S3).
                metadata = extract(part_path, filename) if is_caching else None
                if is_caching:
                    try:
                        commit()
                    except OSError as exc:
                        stop_caching(exc)
                # Recorded before the lock is freed (one transaction with the miss counted):
                # a follower then finds it held, and the pages show its size and sidecar from
                # the client's next request on.
                is_counted = is_caching and record_cached_file(
                    database, storage, cache, index_id, key, filename, size, metadata, is_fetch=True
                )
                release()  # before the last byte goes out: the client then sees a finished cache
                if is_counted:
                    metrics.count_cache(misses=1, fetched_bytes=size)
                else:
                    counters.add(index.id, misses=1, fetched_bytes=size)
                if not is_client_gone:
                    yield held
            except Exception as exc:
                log.error(
                    "mirror download of %s from %s failed, not cached: %s",
                    filename,
                    mask_url(entry["url"]),
                    exc,
                )
                metrics.count_upstream_error(index.path)
                raise
            finally:
                release()
            # After the last byte: the client does not wait for an eviction over the cap.
            if is_caching:
                cache.evict_if_over()

        response = Response(generate(), mimetype="application/octet-stream")
        # A generator that never starts (HEAD, or a client gone before the first byte) never
        # runs its `finally`: the lock would stay held for the life of this worker.
        response.call_on_close(release)
        if total is not None:
            response.headers["Content-Length"] = str(total)
        response.headers["Cache-Control"] = "no-store"  # no ranges, no caching mid-flight
        return response

    def _with_room(self, write: Callable[[], T], needed_bytes: int) -> T:
        """`write()`; when the disk is full, evict least recently used mirror files to make room
        for `needed_bytes` and try once more (the OSError of the last try is raised)."""
        try:
            return write()
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS or not self.cache.make_room(needed_bytes):
                raise
        return write()

    def _follow(self, index: Index, entry: dict[str, Any], part_path: Path) -> BaseResponse:
        """Stream a file another worker of this mirror is downloading, from its part file.

        The final byte only ever comes from the committed blob, once this mirror holds it, and
        only after the bytes sent so far are proven to be the blob's own (a part may belong to
        an earlier, failed leader).
        """
        key = file_key(entry)
        _part, size_path = self._part_paths(index, key)
        timeout = self.settings.upstream_read_timeout_seconds
        try:
            part: IO[bytes] = open(part_path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            if self._holds_now(index, key):
                return self._send_cached(index, key, entry["filename"])
            raise HTTPError(
                503, f"{entry['filename']} is being fetched; try again.", {"Retry-After": "5"}
            ) from None
        total: int | None
        try:
            total = int(size_path.read_text())
        except (OSError, ValueError):
            total = entry.get("size")
        storage, filename, locks = self.storage, entry["filename"], self.locks
        database, index_id = self.database, index.id
        self.counters.add(index.id, hits=1)
        self.cache.touch(key)
        is_held = False

        def is_done() -> bool:
            """Whether the leader committed the blob and recorded that this mirror holds it."""
            nonlocal is_held
            if not storage.exists(key):
                return False
            if not is_held:  # the store may have had it before, for another index
                with database.session() as session:
                    is_held = holds(session, index_id, key)
            return is_held

        def generate() -> Iterator[bytes]:
            nonlocal part
            sent = hashlib.sha256()
            sent_bytes = 0
            has_switched = False  # whether the bytes sent came from more than one part file
            last_size, idle_since = -1, time.monotonic()
            try:
                while True:
                    if is_done():
                        same = not has_switched and _is_same_file(storage, key, part)
                        yield from _rest_of_blob(storage, key, sent, sent_bytes, filename, same)
                        return
                    lock = locks.exclusive(f"file-{index_id}-{key}")
                    leader_gone = lock.try_acquire()
                    lock.close()
                    newer = _current_part(part, part_path)
                    if newer is not part:
                        part, has_switched = newer, True
                    size = os.fstat(part.fileno()).st_size
                    if size != last_size:  # the leader is making progress, if not past us yet
                        last_size, idle_since = size, time.monotonic()
                    # Hold back the final byte: only the committed blob may complete the file.
                    available = size - 1
                    if available > sent_bytes:
                        part.seek(sent_bytes)
                        chunk = part.read(min(CHUNK_BYTES, available - sent_bytes))
                        sent.update(chunk)
                        sent_bytes += len(chunk)
                        idle_since = time.monotonic()
                        yield chunk
                        continue
                    if leader_gone and not is_done():
                        raise UpstreamError(f"the download of {filename} failed in another worker")
                    if time.monotonic() - idle_since > timeout:
                        raise UpstreamTimeout(f"no progress on {filename} for {timeout} s")
                    time.sleep(LOCK_POLL_SECONDS)
            except Exception as exc:
                log.error("following the download of %s failed: %s", filename, exc)
                raise
            finally:
                part.close()

        response = Response(generate(), mimetype="application/octet-stream")
        response.call_on_close(lambda: part.close())  # the part file open now, on HEAD too
        if total is not None:
            response.headers["Content-Length"] = str(total)
        response.headers["Cache-Control"] = "no-store"
        return response


def _count_write_failure(what: str, where: str, exc: OSError) -> None:
    """Log and count a cache write the disk refused (the caller sends the bytes uncached)."""
    log.error("cache write failed for %s, sent uncached: %s", where, exc)
    metrics.count_write_failure(what)


def _current_part(part: IO[bytes], part_path: Path) -> IO[bytes]:
    """The part file now at `part_path`: a new leader replaces the file of one that failed."""
    try:
        now = os.stat(part_path)
    except FileNotFoundError:
        return part  # committed (renamed into the store) or discarded: the leader decides
    mine = os.fstat(part.fileno())
    if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
        return part
    try:
        newer = open(part_path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        return part
    part.close()
    return newer


def _rest_of_blob(
    storage: Storage, key: str, sent: Any, sent_bytes: int, filename: str, is_same_file: bool
) -> Iterator[bytes]:
    """The committed blob from `sent_bytes` on, once the bytes already sent are shown to match."""
    with storage.open(key) as blob:
        if sent_bytes and not is_same_file:
            prefix = hashlib.sha256()
            remaining = sent_bytes
            while remaining > 0:
                chunk = blob.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    break
                prefix.update(chunk)
                remaining -= len(chunk)
            if prefix.hexdigest() != sent.hexdigest():
                raise UpstreamError(
                    f"{filename}: the bytes sent so far differ from the stored file"
                )
        blob.seek(sent_bytes)
        while chunk := blob.read(CHUNK_BYTES):
            yield chunk


def _is_same_file(storage: Storage, key: str, part: IO[bytes]) -> bool:
    """Whether the blob is the very part file we read (a local store commits by rename)."""
    local_path = getattr(storage, "local_path", None)
    if local_path is None:
        return False
    try:
        blob = os.stat(local_path(key))
    except OSError:
        return False
    mine = os.fstat(part.fileno())
    return (blob.st_dev, blob.st_ino) == (mine.st_dev, mine.st_ino)


def stale_header(response: Response) -> Response:
    """Say which mirrors answered from a stale cache (after_request hook)."""
    stale = g.get("pyshelf_stale")
    if stale:
        response.headers[STALE_HEADER] = ", ".join(sorted(stale))
    return response
