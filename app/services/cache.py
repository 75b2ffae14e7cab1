"""The mirror cache's accounting and eviction: the total it holds, each blob's last download,
the size cap.

What each mirror holds and which blobs uploads reference is app/services/cache_blobs.py.
Downloads from the cache update `last_access_at` in batches (at most every few seconds per
worker, never a write per request). When the recorded total passes MIRROR_CACHE_MAX_SIZE, the
least recently downloaded files are removed until the total is below LOW_WATER of the cap, and
with them every mirror's holding. Their project pages stay: the next request fetches a removed
file again; search describes those projects from what is left (app/services/fulltext.py). A
write that fails for a full disk first asks `make_room` to evict, whatever the cap. Eviction
never removes a blob an upload references, and holds `BlobLock` (app/services/cache_blobs.py)
while it checks and deletes.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import shutil
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.core import metrics
from app.core.config import Settings
from app.core.locks import Locks
from app.core.storage import Storage
from app.data.db import Database, begin_write
from app.data.models import (
    Index,
    MirrorBlob,
    MirrorFile,
    MirrorHolding,
    MirrorPage,
    MirrorStats,
    utcnow,
)
from app.services.cache_blobs import (
    LOCK_WAIT_SECONDS,
    BlobLock,
    forget_metadata,
    hold,
    recorded_blobs,
    uploaded_blobs,
)
from app.services.fulltext import index_cached_project

log = logging.getLogger(__name__)

ACCESS_FLUSH_SECONDS = 5.0  # how stale last_access_at may be, per worker
LOW_WATER = 0.9  # eviction frees down to 90 % of the cap, so one miss does not evict each time
EVICT_BATCH = 200  # candidates considered per round
REQUEST_LOCK_WAIT_SECONDS = 0.5  # the blob lock wait in a request thread (a backup holds it long)
DISCARD_LOCK_WAIT_SECONDS = 5.0  # a failed upload's cleanup; what it cannot wait for, verify does


def _projects_of(session: Session, keys: list[str]) -> set[tuple[int, str]]:
    """(mirror, project) of the mirrored files whose bytes or core metadata are `keys`."""
    found: set[tuple[int, str]] = set()
    for start in range(0, len(keys), 500):  # bounded IN lists
        chunk = keys[start : start + 500]
        rows = session.execute(
            select(MirrorFile.index_id, MirrorFile.normalized_name).where(
                MirrorFile.sha256.in_(chunk) | MirrorFile.metadata_sha256.in_(chunk)
            )
        )
        found.update((index_id, name) for index_id, name in rows)
    return found


@dataclass
class Eviction:
    """What one eviction run did."""

    removed_files: int = 0
    removed_bytes: int = 0
    kept_uploads: int = 0  # rows dropped from the cache's accounting: an upload owns those bytes
    total_before: int = 0
    total_after: int = 0
    skipped: str | None = None  # why nothing was tried (lock busy, under the cap)


@dataclass
class CacheStats:
    """Size and use of the mirror cache."""

    total_bytes: int
    files: int
    max_bytes: int | None
    hits: int
    misses: int
    per_index: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def hit_ratio(self) -> float | None:
        """Hits over all cache lookups, or None before the first one."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


class MirrorCache:
    """Accounting and eviction of mirror-cached blobs; one per process (built in Mirror)."""

    def __init__(self, settings: Settings, database: Database, storage: Storage) -> None:
        self.settings = settings
        self.database = database
        self.storage = storage
        self.max_bytes = settings.mirror_cache_max_bytes
        self.blob_lock = BlobLock(settings)
        self.locks = Locks.of(settings)
        self.lock = threading.Lock()
        self.accessed: dict[str, dt.datetime] = {}
        self.flushed_at = time.monotonic()
        atexit.register(_flush_at_exit, weakref.ref(self))

    # --- accounting ----------------------------------------------------------------------

    def record(self, index_id: int, key: str, size: int) -> bool:
        """Mirror `index_id` fetched and verified `key`, now stored: it holds the blob, and the
        cap counts it once (one short transaction). False if that could not be written."""
        try:
            with self.database.session() as session:
                begin_write(session)
                hold(session, index_id, key, size)
                session.commit()
        except Exception:  # accounting must never break a download: it is fetched again
            log.exception("could not record cached blob %s", key)
            return False
        return True

    def touch(self, key: str) -> None:
        """Note a download from the cache; written with others every ACCESS_FLUSH_SECONDS."""
        with self.lock:
            self.accessed[key] = utcnow()
            due = time.monotonic() - self.flushed_at >= ACCESS_FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the pending last-access times (one short transaction)."""
        with self.lock:
            accessed, self.accessed = self.accessed, {}
            self.flushed_at = time.monotonic()
        if not accessed:
            return
        try:
            with self.database.session() as session:
                begin_write(session)
                for key, when in accessed.items():
                    session.execute(
                        update(MirrorBlob)
                        .where(MirrorBlob.sha256 == key, MirrorBlob.last_access_at < when)
                        .values(last_access_at=when)
                    )
                session.commit()
        except Exception:
            log.exception("could not write last-access times of cached files")

    def total_bytes(self, session: Session | None = None) -> int:
        """The recorded size of the mirror cache."""
        query = select(func.coalesce(func.sum(MirrorBlob.size), 0))
        if session is not None:
            return int(session.scalar(query) or 0)
        with self.database.session() as own:
            return int(own.scalar(query) or 0)

    # --- eviction ------------------------------------------------------------------------

    def evict_if_over(self) -> Eviction | None:
        """After a commit: evict when the recorded total passes the cap (cheap when it does not).

        Never waits for another worker's eviction: one at a time is enough.
        """
        if self.max_bytes is None:
            return None
        try:
            if self.total_bytes() <= self.max_bytes:
                return None
            # In a request thread: a backup holding the blob lock makes it skip, not wait.
            return self.evict(wait=False, lock_wait_seconds=REQUEST_LOCK_WAIT_SECONDS)
        except Exception:
            log.exception("mirror cache eviction failed")
            return None

    def evict(
        self,
        *,
        wait: bool = True,
        max_bytes: int | None = None,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    ) -> Eviction:
        """Remove least recently downloaded files until the cache is under LOW_WATER of the cap."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        result = Eviction()
        if cap is None:
            result.skipped = "no MIRROR_CACHE_MAX_SIZE"
            return result
        lock = self.locks.exclusive("evict")  # one eviction at a time, across replicas too
        try:
            if not (lock.acquire() if wait else lock.try_acquire()):
                result.skipped = "another process is evicting"
                return result
            self.flush()  # this process's recent downloads count as recent
            with self.database.session() as session:
                total = result.total_before = self.total_bytes(session)
            if total <= cap:
                result.skipped, result.total_after = "under the cap", total
                return result
            return self._evict_locked(cap, int(cap * LOW_WATER), result, lock_wait_seconds)
        finally:
            lock.close()

    def make_room(self, needed_bytes: int) -> int:
        """After a write failed for a full disk: evict least recently used mirror files, whatever
        the cap, until `needed_bytes` more than the disk has free fit; the bytes removed (0:
        nothing could go)."""
        root = getattr(self.storage, "root", None)
        if root is None:  # blobs elsewhere (S3): removing them frees no local disk
            return 0
        try:
            shortfall = max(needed_bytes - shutil.disk_usage(root).free, 1)
        except OSError:
            shortfall = max(needed_bytes, 1)
        lock = self.locks.exclusive("evict")
        try:
            if not lock.try_acquire():  # another process is evicting: that frees space too
                return 0
            self.flush()
            with self.database.session() as session:
                total = self.total_bytes(session)
            result = Eviction(total_before=total)
            target = max(0, total - shortfall)
            self._evict_locked(total, target, result, REQUEST_LOCK_WAIT_SECONDS)
        except Exception:  # a failed eviction leaves the caller's own fallback
            log.exception("could not evict mirror files to make room")
            return 0
        finally:
            lock.close()
        log.warning(
            "disk full: evicted %d mirror files (%d bytes) to make room for %d bytes",
            result.removed_files,
            result.removed_bytes,
            needed_bytes,
        )
        return result.removed_bytes

    def _evict_locked(
        self, cap: int, target: int, result: Eviction, lock_wait_seconds: float
    ) -> Eviction:
        total = result.total_before
        while total > target:
            with self.database.session() as session:
                candidates = session.execute(
                    select(MirrorBlob.sha256, MirrorBlob.size)
                    .order_by(MirrorBlob.last_access_at, MirrorBlob.sha256)
                    .limit(EVICT_BATCH)
                ).all()
            if not candidates:
                break
            chosen: list[tuple[str, int]] = []
            need = total - target
            for key, size in candidates:
                chosen.append((key, size))
                need -= size
                if need <= 0:
                    break
            with self.blob_lock.exclusive(lock_wait_seconds) as is_locked:
                if not is_locked:
                    result.skipped = "uploads kept the blob lock busy; try again later"
                    break
                removed, kept, described = self._remove(chosen)
            self._describe_again(described)
            result.removed_files += len(removed)
            result.removed_bytes += sum(size for _key, size in removed)
            result.kept_uploads += kept
            total -= sum(size for _key, size in chosen)
        with self.database.session() as session:
            result.total_after = self.total_bytes(session)
        if result.removed_files:
            metrics.count_eviction(result.removed_bytes)
            log.info(
                "mirror cache over %d bytes: evicted %d files (%d bytes), %d bytes left",
                cap,
                result.removed_files,
                result.removed_bytes,
                result.total_after,
            )
        return result

    def _remove(
        self, chosen: list[tuple[str, int]]
    ) -> tuple[list[tuple[str, int]], int, set[tuple[int, str]]]:
        """Drop the rows of `chosen`, then delete the blobs no upload references (lock held);
        return those removed, how many uploads kept, and the projects they described."""
        keys = [key for key, _size in chosen]
        with self.database.session() as session:
            begin_write(session)
            protected = uploaded_blobs(session, keys)
            described = _projects_of(session, keys)
            session.execute(delete(MirrorBlob).where(MirrorBlob.sha256.in_(keys)))
            session.execute(delete(MirrorHolding).where(MirrorHolding.sha256.in_(keys)))
            forget_metadata(session, keys)
            session.commit()
        removed = [(key, size) for key, size in chosen if key not in protected]
        for key, _size in removed:
            self.storage.delete(key)
        return removed, len(keys) - len(removed), described

    def _describe_again(self, described: set[tuple[int, str]]) -> None:
        """Reindex for search the mirrored projects (mirror, name) whose files or metadata were
        evicted: a mirror's project is described only from what it holds (outside the blob
        lock: rendering a description takes a while)."""
        for index_id, normalized_name in sorted(described):
            try:
                index_cached_project(self.database, self.storage, index_id, normalized_name)
            except Exception:  # found by name (or the old text) until `reindex`
                log.exception("could not reindex mirrored %s", normalized_name)

    def discard_unrecorded(self, keys: Iterable[str]) -> None:
        """Delete blobs that a failed upload stored and no row references, so it leaves nothing
        behind; an upload of the same bytes between store and record is waited for."""
        keys = list(keys)
        if not keys:
            return
        try:
            with self.blob_lock.exclusive(DISCARD_LOCK_WAIT_SECONDS) as is_locked:
                if not is_locked:
                    log.warning("blob lock busy: %d unrecorded blobs stay (verify)", len(keys))
                    return
                with self.database.session() as session:
                    kept = recorded_blobs(session, keys)
                for key in keys:
                    if key not in kept:
                        self.storage.delete(key)
        except Exception:  # the caller's own error is the one to answer with
            log.exception("could not remove the blobs of a failed upload")

    # --- admin ---------------------------------------------------------------------------

    def adopt(self) -> tuple[int, int]:
        """Record mirror-cached blobs that nobody recorded (cached before 0003): (files, bytes).

        For the cap only: which mirror fetched a blob is unknown (any page may list a sha256),
        so none holds it; the first request fetches and verifies it again, and keeps this copy.
        """
        with self.database.session() as session:
            known = set(session.scalars(select(MirrorBlob.sha256)))
            listed: dict[str, int] = {}
            for index_id, files in session.execute(
                select(MirrorPage.index_id, MirrorPage.files).where(MirrorPage.is_found.is_(True))
            ):
                for entry in files or []:
                    for key in (entry.get("sha256"), entry.get("metadata_sha256")):
                        if key and key not in known:
                            listed.setdefault(key, index_id)
            uploads = uploaded_blobs(session, listed)
        local_path = getattr(self.storage, "local_path", None)
        # A remote store is listed once (pages may list far more files than are cached).
        stored = {} if local_path or not listed else {o.key: o for o in self.storage.objects()}
        adopted: list[MirrorBlob] = []
        for key, index_id in listed.items():
            if key in uploads:
                continue
            try:
                if local_path is not None:
                    stat = local_path(key).stat()
                    size, stamp = stat.st_size, stat.st_mtime
                else:
                    size, stamp = stored[key].size, stored[key].modified_at
            except (OSError, ValueError, KeyError):
                continue  # listed but not cached: nothing to count
            when = dt.datetime.fromtimestamp(stamp, dt.UTC).replace(tzinfo=None)
            adopted.append(
                MirrorBlob(
                    sha256=key,
                    index_id=index_id,
                    size=size,
                    cached_at=when,
                    last_access_at=when,
                )
            )
        if adopted:
            with self.database.session() as session:
                begin_write(session)
                for row in adopted:
                    session.merge(row)
                session.commit()
        return len(adopted), sum(row.size for row in adopted)

    def stats(self) -> CacheStats:
        """Size, file count and hit ratio, in total and per mirror index."""
        self.flush()
        with self.database.session() as session:
            total, files = session.execute(
                select(func.coalesce(func.sum(MirrorBlob.size), 0), func.count())
            ).one()
            per_index: dict[str, dict[str, int]] = {}
            indexes = session.scalars(select(Index).where(Index.type == "mirror")).all()
            # Per mirror: what it holds (a blob two mirrors fetched counts for both).
            sizes = dict(
                (index_id, (size, count))
                for index_id, size, count in session.execute(
                    select(MirrorHolding.index_id, func.sum(MirrorBlob.size), func.count())
                    .join(MirrorBlob, MirrorBlob.sha256 == MirrorHolding.sha256)
                    .group_by(MirrorHolding.index_id)
                )
            )
            counters = {row.index_id: row for row in session.scalars(select(MirrorStats))}
            hits = misses = 0
            for index in indexes:
                size, count = sizes.get(index.id, (0, 0))
                row = counters.get(index.id)
                index_hits, index_misses = (row.hits, row.misses) if row else (0, 0)
                hits, misses = hits + index_hits, misses + index_misses
                per_index[index.path] = {
                    "bytes": int(size or 0),
                    "files": int(count),
                    "hits": index_hits,
                    "misses": index_misses,
                }
        return CacheStats(
            total_bytes=int(total),
            files=int(files),
            max_bytes=self.max_bytes,
            hits=hits,
            misses=misses,
            per_index=per_index,
        )


def _flush_at_exit(cache: weakref.ref[MirrorCache]) -> None:
    alive = cache()
    if alive is not None:
        alive.flush()


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def stats_as_dict(stats: CacheStats) -> dict[str, Any]:
    """The stats as JSON-ready data (for `cache stats --json`)."""
    return {
        "total_bytes": stats.total_bytes,
        "files": stats.files,
        "max_bytes": stats.max_bytes,
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_ratio": stats.hit_ratio,
        "indexes": stats.per_index,
    }
