"""Search indexing in a thread of each server worker, while the worker has no requests.

What a request queues for search (app/services/fulltext.py: an upload, a page the mirror stores,
a file it caches) used to be indexed by the thread that answered it, right after the response:
during a burst of requests (a `pip install` through an empty mirror) that took a fifth of the
server's CPU and held the client's connection until it was done (bench/RESULTS.md). The worker's
indexer thread waits instead until no request has come or gone for IDLE_SECONDS, or for at most
MAX_WAIT_SECONDS under steady load, and then indexes one item at a time, waiting again between
items. A search indexes what is still queued before it looks (app/http/web/search.py), so it
finds everything queued before it. Without a thread (a server other than pyshelf's worker, the
tests' client), `wake()` indexes at once, in the caller's thread.

What counts as activity: a request a thread answers, when it starts and when its last byte is
sent; one answered on the event loop (app/http/loop.py) when it ends. A long request in between
(a large download) does not hold the indexer back; the GIL is then shared with it. A worker
that stops (a restart, max_requests) leaves what it had not indexed queued: the next wake of
any worker, a search or the next start indexes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.services.fulltext import DRAIN_MAX_JOBS

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.2  # quiet before indexing starts: longer than a client's pause between requests
MAX_WAIT_SECONDS = 5.0  # under steady load, queued items are indexed at most this much later
CATCH_UP_SECONDS = 2.0  # what a search indexes first, at most: a package takes tens of ms


class IdleIndexer:
    """Runs `drain(max_jobs, budget_seconds)` (fulltext.drain) when woken, once the worker is
    idle."""

    def __init__(
        self,
        drain: Callable[[int, float | None], int],
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
    ) -> None:
        self.drain = drain
        self.idle_seconds = idle_seconds
        self.max_wait_seconds = max_wait_seconds
        self.active_at = time.monotonic()
        self.woken = threading.Event()
        self.thread: threading.Thread | None = None
        self.catching_up = threading.Lock()

    def start(self) -> None:
        """Start the indexer thread (a server worker, once it serves: never before a fork)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="search-indexer", daemon=True)
            self.thread.start()

    def touch(self) -> None:
        """A request came in or was answered: the worker is not idle."""
        self.active_at = time.monotonic()

    def wake(self) -> None:
        """Something was queued (and committed): index it when the worker is idle, or now,
        in this thread, when there is no indexer thread."""
        if self.thread is None:
            self.index_now()
        else:
            self.woken.set()

    def index_now(self) -> None:
        """Index what is queued now, in this thread (SEARCH_INDEX_IN_REQUEST)."""
        self._drain(DRAIN_MAX_JOBS)

    def catch_up(self) -> None:
        """Before a search: index what is still queued, in this thread, for at most
        CATCH_UP_SECONDS (a backlog past that, or a write lock busy that long, is left to the
        indexer thread). One search of this worker at a time does it: the others wait for it
        (within the same bound), so that they do not all read the same docs zip."""
        if not self.catching_up.acquire(timeout=CATCH_UP_SECONDS):
            return
        try:
            self._drain(DRAIN_MAX_JOBS, CATCH_UP_SECONDS)
        finally:
            self.catching_up.release()

    def _run(self) -> None:
        while True:
            self.woken.wait()
            self.woken.clear()
            woken_at = time.monotonic()
            while True:
                self._wait_until_idle(woken_at)
                if not self._drain(1):
                    break

    def _wait_until_idle(self, woken_at: float) -> None:
        """Return once no request came or went for idle_seconds, or max_wait_seconds after
        `woken_at`."""
        while True:
            now = time.monotonic()
            quiet = now - self.active_at
            left = woken_at + self.max_wait_seconds - now
            if quiet >= self.idle_seconds or left <= 0:
                return
            time.sleep(min(self.idle_seconds - quiet, left))

    def _drain(self, max_jobs: int, budget_seconds: float | None = None) -> int:
        """Index up to `max_jobs` queued items, oldest first; a failure is logged, and what was
        not indexed stays queued for the next wake, search or start."""
        try:
            return self.drain(max_jobs, budget_seconds)
        except Exception:
            log.exception("search indexing failed; what is queued stays queued")
            return 0
