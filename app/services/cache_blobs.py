"""Which blobs are held and by whom: the rows that say a mirror fetched a blob (`hold`,
`holds`), which blobs an upload references (`uploaded_blobs`), and the blob lock.

A mirror records each file it fetched and verified in `mirror_holdings` (what it may serve:
the blob store is shared by all indexes, and a sha256 on an upstream page proves nothing) and,
once per blob, in `mirror_blobs` (what the cap counts: app/services/cache.py).

Blobs that an upload references (File, its wheel's METADATA sidecar, DocSet) are never removed,
even when a mirror cached the same bytes. Uploads store their blob before they record its row,
so they hold `BlobLock` shared from store to commit; whoever deletes blobs (eviction, orphan
removal) holds it exclusively while it checks for rows and deletes: it sees every upload either
fully recorded or not yet stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.locks import Locks
from app.data.models import DocSet, File, MirrorBlob, MirrorFile, MirrorHolding, MirrorStats, utcnow

HOLDINGS_BATCH = 2000  # keys per IN list (SQLite allows 32,766 parameters, PostgreSQL 65,535)
FEW_HOLDINGS = 1000  # a mirror holding at most this many blobs may have them read at once
LOCK_WAIT_SECONDS = 30.0  # how long eviction waits for uploads between store and record


class BlobLock:
    """The lock named "blobs" (app/core/locks.py): shared to store and record, exclusive to
    delete."""

    def __init__(self, settings: Settings) -> None:
        self.locks = Locks.of(settings)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Held by a writer between storing a blob and committing the row that references it."""
        lock = self.locks.shared("blobs")
        try:
            lock.acquire()
            yield
        finally:
            lock.close()

    @contextlib.contextmanager
    def exclusive(self, timeout_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[bool]:
        """Held while deciding which blobs are unreferenced and deleting them; yields success."""
        lock = self.locks.exclusive("blobs")
        try:
            yield lock.acquire(timeout_seconds)
        finally:
            lock.close()


def uploaded_blobs(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of `keys` an upload references: a release file, a wheel's sidecar, a doc zip."""
    keys = list(keys)
    found: set[str] = set()
    for start in range(0, len(keys), 500):  # bounded IN lists
        chunk = keys[start : start + 500]
        found.update(session.scalars(select(File.sha256).where(File.sha256.in_(chunk))))
        found.update(
            session.scalars(select(File.metadata_sha256).where(File.metadata_sha256.in_(chunk)))
        )
        found.update(session.scalars(select(DocSet.sha256).where(DocSet.sha256.in_(chunk))))
    return found


def recorded_blobs(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of `keys` the database says are stored (uploads and mirror_blobs): no store I/O."""
    keys = list(keys)
    found = uploaded_blobs(session, keys)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        found.update(session.scalars(select(MirrorBlob.sha256).where(MirrorBlob.sha256.in_(chunk))))
    return found


def holds(session: Session, index_id: int, key: str) -> bool:
    """Whether mirror `index_id` fetched the blob `key` from its upstream itself (and may serve
    it); the store may hold the same bytes for another index, which proves nothing here."""
    return (
        session.scalar(
            select(MirrorHolding.index_id).where(
                MirrorHolding.index_id == index_id, MirrorHolding.sha256 == key
            )
        )
        is not None
    )


def held_by(session: Session, index_id: int, keys: Iterable[str | None]) -> set[str]:
    """Those of `keys` that mirror `index_id` holds (what `holds` tells of one, for many).
    A mirror holding no more blobs than there are keys (up to FEW_HOLDINGS: a new mirror, one
    filling its cache) has them all read at once; else they are looked up in bounded IN lists.
    Measured: reading 5,000 holdings takes 15 ms, looking up a 10,000-file page's 20,000 keys
    (with its sidecars') 55 ms; a larger mirror pays the first read of at most 1,001 rows on top
    (~3 ms)."""
    wanted = {key for key in keys if key}
    if not wanted:
        return set()
    of_mirror = select(MirrorHolding.sha256).where(MirrorHolding.index_id == index_id)
    few = min(len(wanted), FEW_HOLDINGS)
    holdings = session.scalars(of_mirror.limit(few + 1)).all()
    if len(holdings) <= few:
        return set(holdings).intersection(wanted)
    found: set[str] = set()
    ordered = sorted(wanted)
    for start in range(0, len(ordered), HOLDINGS_BATCH):
        batch = ordered[start : start + HOLDINGS_BATCH]
        found.update(session.scalars(of_mirror.where(MirrorHolding.sha256.in_(batch))))
    return found


def hold(session: Session, index_id: int, key: str, size: int) -> None:
    """Record in the caller's write transaction that mirror `index_id` fetched, verified and
    stored `key`: it holds the blob, and the cap counts it once."""
    now = utcnow()
    row = session.get(MirrorBlob, key)
    if row is None:
        session.add(
            MirrorBlob(sha256=key, index_id=index_id, size=size, cached_at=now, last_access_at=now)
        )
    else:  # another mirror's too: still one blob, counted once
        row.size, row.last_access_at = size, now
    if session.get(MirrorHolding, (index_id, key)) is None:
        session.add(MirrorHolding(index_id=index_id, sha256=key, fetched_at=now))


def count_fetch(session: Session, index_id: int, fetched_bytes: int) -> None:
    """Add one miss and its bytes to mirror `index_id`'s counters in the caller's write
    transaction (app/services/mirror/stats.py's Counters adds up the rest between flushes)."""
    if session.get(MirrorStats, index_id) is None:
        session.add(MirrorStats(index_id=index_id, hits=0, misses=0, bytes_fetched=0))
        session.flush()
    session.execute(
        update(MirrorStats)
        .where(MirrorStats.index_id == index_id)
        .values(
            misses=MirrorStats.misses + 1,
            bytes_fetched=MirrorStats.bytes_fetched + fetched_bytes,
        )
    )


def forget_metadata(session: Session, keys: list[str]) -> None:
    """Blobs `keys` leave the cache: no mirrored file offers them as its core metadata any more
    (app/services/mirror_metadata.py; the caller commits, the page-cache triggers forget the
    pages)."""
    for start in range(0, len(keys), 500):  # bounded IN lists
        chunk = keys[start : start + 500]
        session.execute(
            update(MirrorFile)
            .where(MirrorFile.metadata_sha256.in_(chunk))
            .values(metadata_sha256=None, is_sidecar=False)
        )
