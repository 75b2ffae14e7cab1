"""The worker's search indexer (app/services/indexer.py): it indexes what was queued once the
worker has had no request for a while, or after a bounded wait under steady load; without its
thread, at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from app.services.fulltext import DRAIN_MAX_JOBS
from app.services.indexer import CATCH_UP_SECONDS, IdleIndexer

DEADLINE_SECONDS = 20.0  # every wait below gives up after this


class Queue:
    """A stand-in for the search queue: `drain(max_jobs, budget)` takes items as the real one
    does and records when each call came."""

    def __init__(self, items: int = 0, fail: bool = False) -> None:
        self.items = items
        self.fail = fail
        self.calls: list[tuple[int, float | None, float]] = []
        self.lock = threading.Lock()

    def drain(self, max_jobs: int, budget_seconds: float | None) -> int:
        with self.lock:
            self.calls.append((max_jobs, budget_seconds, time.monotonic()))
            if self.fail:
                raise RuntimeError("the database is gone")
            done = min(self.items, max_jobs)
            self.items -= done
            return done


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_without_its_thread_it_indexes_at_once() -> None:
    """A server other than pyshelf's worker (or the tests' client) never starts the thread:
    what is queued is indexed in the caller's thread, all of it."""
    queue = Queue(items=3)
    indexer = IdleIndexer(queue.drain)

    indexer.wake()

    assert queue.items == 0
    assert [(jobs, budget) for jobs, budget, _ in queue.calls] == [(DRAIN_MAX_JOBS, None)]


def test_it_waits_for_the_worker_to_be_idle_then_indexes_one_item_at_a_time() -> None:
    queue = Queue(items=3)
    indexer = IdleIndexer(queue.drain, idle_seconds=0.5, max_wait_seconds=DEADLINE_SECONDS)
    indexer.start()
    busy_until = time.monotonic() + 1.0

    indexer.wake()
    while time.monotonic() < busy_until:  # a request every 50 ms: never idle
        indexer.touch()
        time.sleep(0.05)
    last_request = time.monotonic()
    assert queue.calls == []

    wait_for(lambda: queue.items == 0 and len(queue.calls) == 4)
    assert [jobs for jobs, _, _ in queue.calls] == [1, 1, 1, 1]  # the last finds nothing
    assert queue.calls[0][2] >= last_request + 0.4


def test_under_steady_load_it_indexes_after_the_longest_wait() -> None:
    queue = Queue(items=1)
    indexer = IdleIndexer(queue.drain, idle_seconds=DEADLINE_SECONDS, max_wait_seconds=0.3)
    indexer.start()
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            indexer.touch()
            time.sleep(0.02)

    toucher = threading.Thread(target=requests, daemon=True)
    toucher.start()
    try:
        woken_at = time.monotonic()
        indexer.wake()
        wait_for(lambda: queue.items == 0)
    finally:
        stop.set()
        toucher.join(timeout=5)
    assert queue.calls[0][2] >= woken_at + 0.3


def test_a_failed_drain_is_logged_and_the_next_wake_indexes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = Queue(items=1, fail=True)
    indexer = IdleIndexer(queue.drain, idle_seconds=0.0)
    indexer.start()

    indexer.wake()
    wait_for(lambda: "search indexing failed" in caplog.text)
    queue.fail = False
    indexer.wake()

    wait_for(lambda: queue.items == 0)
    assert "the database is gone" in caplog.text


def test_a_search_catches_up_within_its_budget() -> None:
    queue = Queue(items=2)
    indexer = IdleIndexer(queue.drain)

    indexer.catch_up()

    assert queue.items == 0
    assert [(jobs, budget) for jobs, budget, _ in queue.calls] == [
        (DRAIN_MAX_JOBS, CATCH_UP_SECONDS)
    ]


def test_one_search_of_a_worker_catches_up_at_a_time() -> None:
    """Searches that arrive together do not each index (and read the same docs zip): the
    others wait for the first, then find the queue empty."""
    inside: list[int] = []
    overlaps: list[int] = []

    def slow_drain(max_jobs: int, budget_seconds: float | None) -> int:
        inside.append(1)
        overlaps.append(len(inside))
        time.sleep(0.2)
        inside.pop()
        return 0

    indexer = IdleIndexer(slow_drain)
    searches = [threading.Thread(target=indexer.catch_up) for _ in range(4)]
    for search in searches:
        search.start()
    for search in searches:
        search.join(timeout=DEADLINE_SECONDS)

    assert overlaps == [1, 1, 1, 1]
