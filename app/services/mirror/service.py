"""The mirror as one object: pages (app/services/mirror/pages.py), downloads
(app/services/mirror/downloads.py) and PEP 658 sidecars, answering with results
(app/services/mirror/results.py) that the HTTP edge and the operations turn into what they need.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.core import metrics
from app.core.config import Settings
from app.core.dists import InvalidDistribution, parse_filename
from app.core.storage import DISK_FULL_ERRNOS, Storage
from app.core.upstream import UpstreamError, UpstreamTimeout, mask_url
from app.core.upstream_client import UpstreamClient, iter_raw
from app.data.db import Database, begin_write
from app.data.models import Index, MirrorHolding, MirrorPage, MirrorSidecar
from app.services import fulltext
from app.services.cache import MirrorCache
from app.services.cache_blobs import count_fetch, hold, holds
from app.services.indexer import IdleIndexer
from app.services.indexes_view import Dist
from app.services.mirror.downloads import CACHE_WRITE_ERRNOS, Downloads, count_write_failure
from app.services.mirror.pages import Pages, file_key, upstream_budget_seconds
from app.services.mirror.results import (
    Blob,
    Data,
    Head,
    NoNotes,
    NotListed,
    PageNotes,
    Served,
    UpstreamFailed,
    UpstreamTimedOut,
)
from app.services.mirror.stats import Counters
from app.services.mirror_metadata import sidecar_of
from app.services.status import Marker

log = logging.getLogger(__name__)

MAX_METADATA_BYTES = 16 << 20  # 16 MiB: far above any real METADATA file; bounds memory
SIDECAR_RECORD_WAIT_MS = 200  # noting a sidecar's key is optional: never wait long for it


class Mirror:
    """Serves mirror indexes: project pages and files, fetched once and cached."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        storage: Storage,
        upstream: UpstreamClient,
        notes: PageNotes | None = None,
        indexer: IdleIndexer | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.storage = storage
        self.counters = Counters(database)
        self.cache = MirrorCache(settings, database, storage)
        self.pages = Pages(settings, database, storage, upstream, notes or NoNotes())
        # Without a worker's indexer (commands), what a download queues is indexed at once.
        indexer = indexer or IdleIndexer(partial(fulltext.drain, database, storage))
        self.downloads = Downloads(
            settings, database, storage, upstream, self.counters, self.cache, indexer
        )
        self.locks = self.downloads.locks

    @property
    def upstream(self) -> UpstreamClient:
        """The upstream client of pages and downloads alike (tests put a recording one in)."""
        return self.pages.upstream

    @upstream.setter
    def upstream(self, client: UpstreamClient) -> None:
        self.pages.upstream = self.downloads.upstream = client

    # --- pages (app/services/mirror/pages.py) --------------------------------------------------

    def page(self, index: Index, name: str) -> MirrorPage | None:
        """The cached page of `name`, fetched or revalidated when stale (Pages.page)."""
        return self.pages.page(index, name)

    def listed_entry(
        self, index: Index, name: str, filename: str, key: str
    ) -> dict[str, Any] | None:
        """The entry of `filename` under `key` on the page of `name` (Pages.listed_entry)."""
        return self.pages.listed_entry(index, name, filename, key)

    def refresh(self, index: Index, name: str) -> bool:
        """Mark a cached page stale so the next request revalidates it (Pages.refresh)."""
        return self.pages.refresh(index, name)

    def project(self, index: Index, normalized_name: str) -> tuple[str, list[Dist]] | None:
        """The upstream project's name and files as local `+f` links (Pages.project)."""
        return self.pages.project(index, normalized_name)

    def project_status(self, index: Index, normalized_name: str) -> Marker | None:
        """The upstream's PEP 792 status as last fetched (Pages.project_status)."""
        return self.pages.project_status(index, normalized_name)

    def file_age_from(self, index: Index, name: str, key: str, filename: str) -> dt.datetime | None:
        """When the cooldown of a mirrored file counts from (Pages.file_age_from)."""
        return self.pages.file_age_from(index, name, key, filename)

    def expires_at(self, indexes: list[Index], normalized_name: str) -> dt.datetime | None:
        """When the first of these mirrors' pages of the name is due (Pages.expires_at)."""
        return self.pages.expires_at(indexes, normalized_name)

    def project_names(self, index: Index) -> list[str]:
        """Names of the projects this mirror has cached (Pages.project_names)."""
        return self.pages.project_names(index)

    # --- files ---------------------------------------------------------------------------------

    def serve_file(
        self,
        session: Session,
        index: Index,
        key: str,
        filename: str,
        *,
        is_metadata: bool,
        is_head: bool = False,
    ) -> Served:
        """A mirrored file (or its sidecar): from the cache, or streamed from upstream into it;
        `session` is the caller's (a request's), for the first look at what the mirror holds.

        HEAD of a file not cached yet answers from the page without starting a download.
        Raises NotListed, UpstreamFailed, UpstreamTimedOut or StillFetching.
        """
        try:
            name = parse_filename(filename).normalized_name
        except InvalidDistribution:
            raise NotListed(f"No such file on {index.path}: {filename}") from None
        if not is_metadata and self._is_cached_here(session, index, key):
            # The sha256 in the URL names the bytes: no need to decode the project's page.
            return self.downloads.send_cached(index, key, filename)
        sidecar = self._cached_sidecar(session, index, key, filename) if is_metadata else None
        if sidecar is not None:
            return self.downloads.send_cached(
                index, sidecar, f"{filename}.metadata", is_metadata=True
            )
        if index.is_offline:  # what it holds was served above; it fetches nothing
            raise NotListed(f"{filename} is not in this offline mirror {index.path}.")
        entry = self.pages.listed_entry(index, name, filename, key)
        if entry is None:
            raise NotListed(f"No such file on {index.path}: {filename}")
        if is_metadata:
            return self.sidecar(session, index, entry)
        if entry.get("sha256") and self._is_cached_here(session, index, key):
            return self.downloads.send_cached(index, key, filename)
        if is_head:
            return Head(entry.get("size"))
        return self.downloads.fetch(index, entry)

    def _is_cached_here(self, session: Session, index: Index, key: str) -> bool:
        """Whether this mirror holds the blob `key` (fetched it itself) and the store has it."""
        return holds(session, index.id, key) and self.storage.exists(key)

    def _cached_sidecar(
        self, session: Session, index: Index, key: str, filename: str
    ) -> str | None:
        """The sidecar of this mirror's file `key`: the METADATA extracted when it cached the
        wheel, else the upstream's one recorded; if it holds it and it is stored."""
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
                session.merge(_sidecar_row(index, entry, digest))
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
                session.merge(_sidecar_row(index, entry, digest))
                session.commit()
        except (IntegrityError, OperationalError):  # another worker noted the sidecar first
            self.counters.add(index.id, misses=1, fetched_bytes=size)
            self.cache.record(index.id, digest, size)
            self._remember_sidecar(index, entry, digest)
            return
        metrics.count_cache(misses=1, fetched_bytes=size)

    def sidecar(
        self, session: Session, index: Index, entry: dict[str, Any], *, replace: bool = False
    ) -> Blob | Data:
        """The PEP 658 sidecar of a page's file: fetched once per mirror, verified against the
        advertised sha256, cached (bytes stored already for another index are kept, never served
        unfetched; `replace`: verify --repair, over a damaged stored copy)."""
        digest = entry.get("metadata_sha256")
        name = entry["filename"] + ".metadata"
        if not digest:
            raise NotListed(f"Upstream offers no core metadata for {entry['filename']}.")
        if not replace and self._is_cached_here(session, index, digest):
            self._remember_sidecar(index, entry, digest)
            return self.downloads.send_cached(index, digest, name, is_metadata=True)
        lock = self.downloads.locks.exclusive(f"meta-{index.id}-{digest}")
        try:  # one fetch per sidecar and mirror across workers (uv asks for many at once)
            if not lock.acquire(upstream_budget_seconds(self.settings, self.upstream)):
                raise UpstreamTimedOut(f"{name} is still being fetched by another worker.")
            if not replace and self.downloads.holds_now(index, digest):
                return self.downloads.send_cached(index, digest, name, is_metadata=True)
            data = self._fetch_metadata(index, entry["url"] + ".metadata", name)
            if hashlib.sha256(data).hexdigest() != digest:
                log.error("hash mismatch for %s from %s: not cached", name, mask_url(entry["url"]))
                metrics.count_upstream_error(index.path)
                raise UpstreamFailed(f"Upstream sent {name} with the wrong sha256; not served.")
            if not self._save_sidecar(index, digest, data, name, replace=replace):
                self.counters.add(index.id, misses=1, fetched_bytes=len(data))
                return Data(data)
            self._record_sidecar(index, entry, digest, len(data))
        finally:
            lock.close()
        self.cache.evict_if_over()
        return Blob(digest, name, is_metadata=True, is_hit=False)

    def _save_sidecar(
        self, index: Index, digest: str, data: bytes, name: str, *, replace: bool
    ) -> bool:
        """Store verified sidecar bytes, unless stored already; False when the disk refused them
        (after evicting to make room, once): the caller then sends them uncached."""
        for attempt in range(2):
            try:
                if replace:
                    self.storage.delete(digest)  # the damaged copy: the key names these bytes
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
        count_write_failure("metadata", f"{index.path}: {name}", failure)
        return False

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
            raise UpstreamTimedOut(f"Upstream timed out fetching {name}: {exc}") from None
        except UpstreamError as exc:
            log.error("fetching %s from %s failed: %s", name, mask_url(url), exc)
            metrics.count_upstream_error(index.path)
            raise UpstreamFailed(f"Upstream failed fetching {name}: {exc}") from None
        return bytes(data)


def _sidecar_row(index: Index, entry: dict[str, Any], digest: str) -> MirrorSidecar:
    """The MirrorSidecar row saying that page entry `entry` has the sidecar `digest`."""
    return MirrorSidecar(
        index_id=index.id,
        dist_sha256=file_key(entry),
        filename=entry["filename"],
        normalized_name=parse_filename(entry["filename"]).normalized_name,
        metadata_sha256=digest,
    )
