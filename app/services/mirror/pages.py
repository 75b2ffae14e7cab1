"""A mirror's project pages: fetched once per project across workers, fresh for a while,
revalidated with the upstream's validators, and served stale when the upstream fails
(RFC 5861 stale-if-error). Pages are cached in the database (MirrorPage); file locks under
DATA_DIR/locks make one fetch per project (the kernel releases them when a worker dies)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core import metrics
from app.core.config import Settings
from app.core.dists import InvalidDistribution, parse_filename
from app.core.locks import FileLock
from app.core.storage import Storage
from app.core.upstream import (
    UpstreamError,
    UpstreamFile,
    UpstreamNotFound,
    UpstreamTimeout,
    mask_url,
)
from app.core.upstream_client import UpstreamClient
from app.data.db import Database, begin_write, get_session
from app.data.models import Index, MirrorPage, MirrorSidecar, utcnow
from app.services.fulltext import queue_stored_page
from app.services.indexes import file_path
from app.services.indexes_view import Dist
from app.services.mirror.results import PageNotes, UpstreamFailed, UpstreamTimedOut
from app.services.mirror.stats import stats_row
from app.services.mirror_metadata import cached_files
from app.services.pagecache import current_generation
from app.services.provenance import mirrored_provenance_path
from app.services.status import Marker

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 255  # MirrorPage.normalized_name: longer project names are nowhere upstream
RETRY_AFTER_SECONDS = 30  # what a client is told when the upstream failed with nothing cached


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:  # stored times end in Z (UTC): read without it, they are naive UTC already
        parsed = dt.datetime.fromisoformat(value[:-1] if value.endswith("Z") else value)
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


def upstream_budget_seconds(settings: Settings, upstream: UpstreamClient) -> float:
    """How long one upstream request may take with all its retries: what a waiter allows."""
    attempts = settings.upstream_retries + 1
    per_attempt = settings.upstream_connect_timeout_seconds + settings.upstream_read_timeout_seconds
    backoff = getattr(upstream, "backoff_seconds", 0.5) * (2**settings.upstream_retries)
    return per_attempt * attempts + backoff


class Pages:
    """A mirror's project pages: fresh, revalidated, or stale when the upstream fails."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        storage: Storage,
        upstream: UpstreamClient,
        notes: PageNotes,
    ) -> None:
        self.settings = settings
        self.database = database
        self.storage = storage
        self.upstream = upstream
        self.notes = notes
        self.lock_dir = Path(settings.data_dir) / "locks"

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

    def read(self, index: Index, name: str) -> MirrorPage | None:
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
        page = self.read(index, name)
        if index.is_offline:  # never a network: what bundles brought, fresh until the next one
            return page if page is not None and page.is_found else None
        now = utcnow()
        if page is not None and self._is_fresh(index, page, now):
            return page if page.is_found else None
        # The name comes from the URL: hashed, a NUL or a 300-character name is a valid lock.
        name_key = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        lock = FileLock(self.lock_dir / f"page-{index.id}-{name_key}.lock")
        try:
            if not lock.acquire(upstream_budget_seconds(self.settings, self.upstream)):
                if page is not None:
                    return self._stale(index, page, "another worker is still fetching it")
                raise UpstreamTimeout(f"another worker is still fetching {name}")
            # Another worker may have fetched it while we waited for the lock.
            page = self.read(index, name)
            if page is not None and self._is_fresh(index, page, utcnow()):
                return page if page.is_found else None
            return self._fetch(index, name, page)
        finally:
            lock.close()

    def listed_entry(
        self, index: Index, name: str, filename: str, key: str
    ) -> dict[str, Any] | None:
        """The entry of `filename` under `key` on the mirror's page of project `name` (fetched or
        revalidated as pages are); None when the page does not list it.

        Raises UpstreamTimedOut or UpstreamFailed when the upstream fails with nothing cached.
        """
        try:
            page = self.page(index, name)
        except UpstreamTimeout as exc:
            raise UpstreamTimedOut(
                f"Upstream timed out: {exc}", retry_after_seconds=RETRY_AFTER_SECONDS
            ) from None
        except UpstreamError as exc:
            raise UpstreamFailed(
                f"Upstream failed: {exc}", retry_after_seconds=RETRY_AFTER_SECONDS
            ) from None
        return next(
            (
                e
                for e in (page.files if page else [])
                if e["filename"] == filename and file_key(e) == key
            ),
            None,
        )

    def _stale(self, index: Index, page: MirrorPage, why: str) -> MirrorPage | None:
        log.warning("serving stale %s/%s: %s", index.path, page.normalized_name, why)
        self.notes.served_stale(index.path)
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
            self.note_upstream(index, str(exc))
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
            stats_row(session, index.id).last_ok_at = now
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
        self.notes.stored_page(before, after)
        return page if page.is_found else None

    def note_upstream(self, index: Index, error: str) -> None:
        """Record an upstream failure (a success is recorded with what it brought, in _save)."""
        metrics.count_upstream_error(index.path)
        try:
            with self.database.session() as session:
                begin_write(session)
                row = stats_row(session, index.id)
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

    # --- what indexes_view.py and the blueprints ask --------------------------------------------

    def project(self, index: Index, normalized_name: str) -> tuple[str, list[Dist]] | None:
        """The upstream project's name and files as local `+f` links, or None if unknown."""
        page = self.page(index, normalized_name)
        if page is None:
            return None
        dists = []
        index_path = index.path
        # A fresh session, as read(): the file may have been cached a moment ago by another worker.
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
            uploaded_at = _parse_time(entry.get("upload_time"))
            dists.append(
                Dist(
                    filename=entry["filename"],
                    path=file_path(index_path, file_key(entry), entry["filename"]),
                    version=version,
                    sha256=entry.get("sha256"),
                    size=held.size if held else entry.get("size"),
                    requires_python=entry.get("requires_python"),
                    yanked=entry.get("yanked") or False,
                    upload_time=uploaded_at,
                    metadata_sha256=(
                        held.metadata_sha256
                        if held and held.is_sidecar
                        else entry.get("metadata_sha256")
                    ),
                    index_path=index_path,
                    # age_from(entry), without parsing the upload time twice
                    age_from=uploaded_at or _parse_time(entry.get("first_seen_at")),
                    provenance=mirrored_provenance_path(index_path, entry),
                )
            )
        return page.name, dists

    def project_status(self, index: Index, normalized_name: str) -> Marker | None:
        """The upstream's PEP 792 status as last fetched (a fresh session, as read), or None."""
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
        page = self.read(index, name)
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
