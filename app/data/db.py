"""The database: Base, engine setup (SQLite WAL + busy timeout, or PostgreSQL), one session per
request, and `begin_write`, which serializes writers on both."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from flask import Flask, g
from sqlalchemy import MetaData, Select, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.core.locks import advisory_key, is_postgresql

BUSY_TIMEOUT_MS = 30_000  # 30 s: how long a writer waits for another (SQLite and PostgreSQL)
IMMEDIATE = {"pyshelf_immediate": True}
# PostgreSQL: connections each worker keeps open, and how many more it may open in a burst.
# A request uses one at a time (its session, or a short one of the mirror's); gunicorn's
# THREADS (8 by default) bound how many run at once.
PG_POOL_SIZE = 5
PG_POOL_OVERFLOW = 15
WRITE_LOCK_KEY = advisory_key("write")  # pg_advisory_xact_lock: one writer at a time

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base whose constraints have stable names (Alembic needs them)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite turn on WAL, a busy timeout, foreign keys and explicit BEGIN."""
    if is_postgresql(url):
        return _postgresql_engine(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (SQLAlchemy's documented
        # recipe), so a writer can ask for BEGIN IMMEDIATE below.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode except on power loss
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that later writes fails at once with SQLITE_BUSY when another
        # worker committed in between; writers take the lock up front and wait for it instead.
        options = conn.get_execution_options()
        if not options.get("pyshelf_immediate"):
            conn.exec_driver_sql("BEGIN")
            return
        wait_ms = options.get("pyshelf_wait_ms")
        if wait_ms is None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int(wait_ms)}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:  # the connection goes back to the pool with the usual patience
            conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    return engine


def _postgresql_engine(url: str) -> Engine:
    """PostgreSQL with writers serialized as on SQLite (see begin_write)."""
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=PG_POOL_SIZE, max_overflow=PG_POOL_OVERFLOW
    )

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # The code relies on SQLite's one-writer-at-a-time (BEGIN IMMEDIATE): checks such as
        # "is this filename uploaded yet?" followed by an insert, or read-modify-write of
        # counters. A transaction-level advisory lock gives writers the same order across
        # workers and replicas; it is released at COMMIT or ROLLBACK. READ COMMITTED (the
        # default) makes each statement after the lock see every write committed before it.
        # A writer that waits longer fails as it would on SQLite (busy timeout), instead of
        # hanging its worker thread.
        options = conn.get_execution_options()
        if options.get("pyshelf_immediate"):
            wait_ms = int(options.get("pyshelf_wait_ms", BUSY_TIMEOUT_MS))
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")

    return engine


class Database:
    """An engine and its session factory, built once per process in create_app."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session outside a request (CLI, bootstrap); the caller commits."""
        session = self.sessionmaker()
        try:
            yield session
        finally:
            session.close()


class FastRead:
    """A Core SELECT compiled once for the database and run on a pooled DBAPI connection (no
    ORM, no type processing, no BEGIN: one autocommit read on SQLite): for the few reads on
    the hot paths that answer before Flask (stored pages, stored files)."""

    def __init__(self, database: Database, statement: Select[*tuple[Any, ...]]) -> None:
        self.engine = database.engine
        compiled = statement.compile(dialect=self.engine.dialect)
        self.sql, self.positions = compiled.string, compiled.positiontup
        self.constants = compiled.params  # the statement's own literals (LIMIT, ...)
        # psycopg: binary results, so that a stored page comes back as its bytes, not as hex
        # text to decode (a third of a 10,000-file page's time)
        self.cursor_options = {"binary": True} if self.engine.dialect.name == "postgresql" else {}

    def one(self, **params: Any) -> tuple[Any, ...] | None:
        """The first row for these bind parameters, as the driver returns it, or None."""
        values = {**self.constants, **params}
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor(**self.cursor_options)
            cursor.execute(
                self.sql, [values[p] for p in self.positions] if self.positions else values
            )
            row = cursor.fetchone()
            cursor.close()
        finally:
            connection.close()  # back to the pool, which rolls back
        return row


class OwnConnection:
    """On SQLite, a connection outside the pool for one thread that must never wait long (the
    worker's event loop: app/http/loop.py): FastReads run on it wait at most `busy_ms` for a
    lock, then raise. Opened by the first read, in the thread that makes it."""

    def __init__(self, database: Database, busy_ms: int) -> None:
        self.engine = database.engine
        self.busy_ms = busy_ms
        self.connection: Any = None

    @classmethod
    def for_database(cls, database: Database, busy_ms: int) -> OwnConnection | None:
        """One for SQLite; None on a database across the network (a round trip would block)."""
        return cls(database, busy_ms) if database.engine.dialect.name == "sqlite" else None

    def one(self, read: FastRead, **params: Any) -> tuple[Any, ...] | None:
        """`read.one(**params)`, on this connection."""
        if self.connection is None:
            proxied = self.engine.raw_connection()
            proxied.detach()  # never back to the pool: this thread's alone
            self.connection = proxied.dbapi_connection
            self.connection.execute(f"PRAGMA busy_timeout={int(self.busy_ms)}")
        values = {**read.constants, **params}
        arguments = [values[p] for p in read.positions] if read.positions else values
        cursor = self.connection.execute(read.sql, arguments)
        try:
            return cast("tuple[Any, ...] | None", cursor.fetchone())
        finally:
            cursor.close()


def get_session() -> Session:
    """The current request's session, created on first use and closed at teardown."""
    if "db_session" not in g:
        from flask import current_app

        g.db_session = current_app.extensions["pyshelf.db"].sessionmaker()
    return g.db_session


def begin_write(session: Session, *, wait_ms: int | None = None) -> None:
    """Start the session's next transaction as a writer, after any other writer is done.

    BEGIN IMMEDIATE on SQLite; on PostgreSQL a transaction-level advisory lock (make_engine).
    A writer that waits longer than `wait_ms` gets sqlalchemy's OperationalError: optional
    writes (a page for the cache) pass a short wait so that a busy database never slows reads.
    None: BUSY_TIMEOUT_MS.
    """
    if session.in_transaction():
        session.commit()
    options = IMMEDIATE if wait_ms is None else {**IMMEDIATE, "pyshelf_wait_ms": wait_ms}
    session.connection(execution_options=options)


def init_app(app: Flask, database: Database) -> None:
    """Register the database and close each request's session when it ends."""
    app.extensions["pyshelf.db"] = database

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()
