"""The mirror's per-index statistics: hits, misses and bytes fetched, flushed to MirrorStats."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core import metrics
from app.data.db import Database, begin_write
from app.data.models import MirrorStats

log = logging.getLogger(__name__)

COUNTER_FLUSH_SECONDS = 5.0


class Counters:
    """Hits, misses and bytes fetched, added up in this process and flushed to the database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.lock = threading.Lock()
        self.pending: dict[int, list[int]] = {}
        self.flushed_at = time.monotonic()
        # Hits counted since the last flush would be lost when gunicorn stops or recycles the
        # worker; a weak reference lets tests' short-lived apps go away.
        atexit.register(flush_at_exit, weakref.ref(self))

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
                    stats_row(session, index_id)
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


def flush_at_exit(counters: weakref.ref[Counters]) -> None:
    """Flush the counters if they are still alive (registered with atexit)."""
    alive = counters()
    if alive is not None:
        alive.flush()


def stats_row(session: Session, index_id: int) -> MirrorStats:
    """The MirrorStats row of a mirror, made when missing (flushed, not committed)."""
    row = session.get(MirrorStats, index_id)
    if row is None:
        row = MirrorStats(index_id=index_id, hits=0, misses=0, bytes_fetched=0)
        session.add(row)
        session.flush()
    return row
