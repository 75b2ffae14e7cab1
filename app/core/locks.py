"""Named locks shared by every worker, admin command and replica of one pyshelf.

With SQLite (one machine) a lock is flock() on DATA_DIR/locks/NAME.lock. With PostgreSQL,
where several replicas share one database, it is a session-level advisory lock on a connection
held for the lock's lifetime (its key a stable hash of the name). Both are released when their
holder dies: the kernel drops a dead process's flock(), and PostgreSQL ends the session of a
dropped connection.

Exclusive waits poll a non-blocking attempt: a queued exclusive request in PostgreSQL would
make later shared requests queue behind it, which flock() does not do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from app.core.config import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
# Connections that hold advisory locks, per process: a few stay open, more come and go with
# the downloads in flight (each holds one while it runs).
LOCK_POOL_SIZE = 2
LOCK_POOL_OVERFLOW = 64

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def is_postgresql(url: str) -> bool:
    """Whether a database URL names PostgreSQL (any driver)."""
    return make_url(url).get_backend_name() == "postgresql"


def advisory_key(name: str) -> int:
    """A lock name as a signed 64-bit key for pg_advisory_lock: the same in every process."""
    return int.from_bytes(
        hashlib.sha256(f"pyshelf:{name}".encode()).digest()[:8], "big", signed=True
    )


class Lock(Protocol):
    """One named lock; `close` releases it (and is safe to call more than once)."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never blocks."""
        ...

    def acquire(self, timeout_seconds: float | None = None) -> bool:
        """Wait for the lock, at most `timeout_seconds` (None: as long as it takes)."""
        ...

    def close(self) -> None:
        """Release the lock (if held) and what holds it."""
        ...


class FileLock:
    """flock() on a file: exclusive, or shared with other shared holders."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX

    def try_acquire(self) -> bool:
        """Take the lock if free; never blocks."""
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, self.mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(self, timeout_seconds: float | None = None) -> bool:
        """Wait for the lock at most `timeout_seconds` (None: block until it is free)."""
        assert self.fd is not None
        if timeout_seconds is None:
            fcntl.flock(self.fd, self.mode)
            return True
        return _poll(self.try_acquire, timeout_seconds)

    def close(self) -> None:
        """Release the lock."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _poll(try_acquire: Callable[[], bool], timeout_seconds: float) -> bool:
    """Try every POLL_SECONDS until the lock is taken (True) or `timeout_seconds` pass."""
    deadline = time.monotonic() + timeout_seconds
    while not try_acquire():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock, on a connection of its own while held."""

    def __init__(self, engine: Engine, name: str, *, shared: bool = False) -> None:
        self.engine = engine
        self.name = name
        self.key = advisory_key(name)
        self.suffix = "_shared" if shared else ""
        self.connection: Connection | None = None
        self._held = False

    def _connect(self) -> Connection:
        if self.connection is None:
            self.connection = self.engine.connect()
        return self.connection

    def try_acquire(self) -> bool:
        """Take the lock if free; never waits for another holder."""
        if self._is_held():
            return True
        connection = self._connect()
        query = text(f"SELECT pg_try_advisory_lock{self.suffix}(:key)")
        if connection.scalar(query, {"key": self.key}):
            self._held = True
            return True
        self._release_connection()
        return False

    def acquire(self, timeout_seconds: float | None = None) -> bool:
        """Wait for the lock at most `timeout_seconds` (None: block in the server until free)."""
        if timeout_seconds is None:
            connection = self._connect()
            connection.execute(
                text(f"SELECT pg_advisory_lock{self.suffix}(:key)"), {"key": self.key}
            )
            self._held = True
            return True
        return _poll(self.try_acquire, timeout_seconds)

    def _is_held(self) -> bool:
        return self._held and self.connection is not None

    def _release_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def close(self) -> None:
        """Unlock and give the connection back; a connection that fails to unlock is dropped."""
        connection = self.connection
        if connection is None:
            return
        if self._held:
            self._held = False
            try:
                connection.execute(
                    text(f"SELECT pg_advisory_unlock{self.suffix}(:key)"), {"key": self.key}
                )
            except Exception:  # closing the session releases it server-side
                log.warning("could not release lock %s: dropping its connection", self.name)
                with contextlib.suppress(Exception):
                    connection.invalidate()
        self._release_connection()


def _lock_engine(url: str) -> Engine:
    """One engine per process and URL for lock connections (autocommit: never idle in a
    transaction while a download holds its lock for minutes)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(
                url,
                isolation_level="AUTOCOMMIT",
                pool_pre_ping=True,
                pool_size=LOCK_POOL_SIZE,
                max_overflow=LOCK_POOL_OVERFLOW,
            )
            _engines[url] = engine
        return engine


def _close_idle_lock_connections() -> None:
    """Before a fork: a pooled connection must not live on in two processes (gunicorn's master,
    which took the schema lock while preparing, forks its workers; psycopg then fails with
    `prepared statement "_pg3_0" already exists`). Connections of locks still held stay open."""
    for engine in _engines.values():
        engine.dispose()


os.register_at_fork(before=_close_idle_lock_connections)


class Locks:
    """Makes named locks: flock() files for SQLite, advisory locks for PostgreSQL."""

    def __init__(self, lock_dir: Path, database_url: str) -> None:
        self.lock_dir = Path(lock_dir)
        self.database_url = database_url
        # Whether other machines (replicas) share these locks: then a lock held elsewhere has
        # no local trace, such as a download's part file.
        self.is_advisory = is_postgresql(database_url)
        self.is_distributed = self.is_advisory

    @classmethod
    def of(cls, settings: Settings) -> Locks:
        """The locks of a configured pyshelf (its lock_dir and database)."""
        return cls(settings.lock_dir, settings.database_url)

    def exclusive(self, name: str) -> Lock:
        """An exclusive lock named `name` (not yet taken)."""
        return self._make(name, shared=False)

    def shared(self, name: str) -> Lock:
        """A shared lock named `name`: many shared holders, or one exclusive one."""
        return self._make(name, shared=True)

    def _make(self, name: str, *, shared: bool) -> Lock:
        if self.is_advisory:
            return AdvisoryLock(_lock_engine(self.database_url), name, shared=shared)
        return FileLock(self.lock_dir / f"{name}.lock", shared=shared)

    @contextlib.contextmanager
    def hold(self, name: str, timeout_seconds: float | None = None) -> Iterator[bool]:
        """Hold an exclusive lock for a block; yields whether it was taken in time."""
        lock = self.exclusive(name)
        try:
            yield lock.acquire(timeout_seconds)
        finally:
            lock.close()
