"""A throwaway PostgreSQL server for the tests (PYSHELF_TEST_DATABASE=postgres).

Debian's server binaries (`make postgres` installs them) run in a temporary directory on a
free loopback port, with the unix socket in that directory too, so nothing touches a system
cluster. initdb refuses to run as root: as root the server runs as the `postgres` user that
Debian's package creates. Durability is off (fsync, full-page writes): the data is thrown away.

Every pyshelf data directory that a test uses gets its own database, named after the
directory's path, so a server restarted on the same DATA_DIR finds the same database.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from tests import settings_defaults

USER = "pyshelf"
PASSWORD = "pyshelf-test-pw"  # scram over TCP: pg_dump and psql get it from pg_env()
START_TIMEOUT_SECONDS = 60
MIGRATED_TEMPLATE = "pyshelf_migrated"


def find_bin_dir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps them by major version)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One server in a temporary directory; `start()`, `database_url(...)`, `stop()`."""

    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "PYSHELF_TEST_DATABASE=postgres needs PostgreSQL's server (make postgres)"
            )
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pyshelf-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.created: set[str] = set()
        self._admin: psycopg.Connection | None = None
        # initdb and postgres refuse root: run them as Debian's postgres user.
        self.run_as = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=START_TIMEOUT_SECONDS
        )

    def start(self) -> PostgresServer:
        """initdb, then start the server and wait until it accepts connections."""
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD)
        if self.run_as:
            os.chown(password_file, pwd.getpwnam(self.run_as).pw_uid, -1)
        result = self._run(
            "initdb",
            f"--pgdata={self.data}",
            f"--username={USER}",
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.root}",  # the unix socket here, not in /var/run/postgresql
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c synchronous_commit=off",
                "-c max_connections=300",  # every test's app pool, servers, CLI commands
                "-c shared_buffers=64MB",
            ]
        )
        result = self._run(
            "pg_ctl",
            "start",
            f"--pgdata={self.data}",
            f"--log={self.root / 'server.log'}",
            f"--options={options}",
            "--wait",
            f"--timeout={START_TIMEOUT_SECONDS}",
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{result.stderr}\n{self.log()}")
        return self

    def log(self) -> str:
        """What the server logged."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if self._admin is not None:
            with contextlib.suppress(psycopg.Error):
                self._admin.close()
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", f"--pgdata={self.data}", "--mode=fast", "--wait")
        shutil.rmtree(self.root, ignore_errors=True)

    def database_url(self, name: str) -> str:
        """The SQLAlchemy URL of database `name` (made by create_database)."""
        return f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def _admin_connection(self) -> psycopg.Connection:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(
                host=str(self.root), port=self.port, user=USER, dbname="postgres", autocommit=True
            )
        return self._admin

    def create_database(self, name: str, template: str = "template0") -> str:
        """Create a database (if it does not exist yet) as a copy of `template`; its URL."""
        if name not in self.created:
            connection = self._admin_connection()
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            self.created.add(name)
        return self.database_url(name)

    def make_migrated_template(self) -> None:
        """A database migrated to head: tests' databases are copies (no migration per test)."""
        from app.core import locks
        from app.core.config import Settings
        from app.ops.prepare import migrate

        url = self.create_database(MIGRATED_TEMPLATE)
        migrate(Settings(data_dir=self.root, database_url=url))
        engine = locks._engines.pop(url, None)  # a copy needs the template without sessions
        if engine is not None:
            engine.dispose()
        self.created.discard(MIGRATED_TEMPLATE)  # never dropped by a test

    def drop_database(self, name: str) -> None:
        """Drop a database, ending the connections that tests' engines left open."""
        self._admin_connection().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.discard(name)

    def url_for_data_dir(self, data_dir: str | os.PathLike[str]) -> str:
        """The database that belongs to a pyshelf DATA_DIR (created on first use)."""
        template = "template0" if EMPTY else MIGRATED_TEMPLATE
        return self.create_database(database_name(data_dir), template)


def database_name(data_dir: str | os.PathLike[str]) -> str:
    """A database name derived from a data directory's absolute path."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]
    return f"t_{digest}"


def wait_until_ready(server: PostgresServer, timeout_seconds: float = 10.0) -> None:
    """Block until the server answers a query (pg_ctl --wait usually suffices)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            server._admin_connection().execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


# --- the session's server, as the fixtures in tests/conftest.py use it ---------------------

SERVER: PostgresServer | None = None
# Tests marked empty_database (migrations) get empty databases; the rest start migrated.
EMPTY = False


def _default_database(settings: Any) -> None:
    if not settings.database_url:
        assert SERVER is not None
        object.__setattr__(settings, "database_url", SERVER.url_for_data_dir(settings.data_dir))


def activate() -> PostgresServer:
    """Start the session's server; Settings for test data dirs then default to a database."""
    global SERVER
    SERVER = PostgresServer().start()
    wait_until_ready(SERVER)
    SERVER.make_migrated_template()
    settings_defaults.register(_default_database)
    return SERVER


def deactivate() -> None:
    """Stop the session's server and give Settings back its own defaults."""
    global SERVER
    settings_defaults.unregister(_default_database)
    if SERVER is not None:
        SERVER.stop()
        SERVER = None


def database_env(data_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """DATABASE_URL (and the SECRET_KEY it requires) for a subprocess using `data_dir`."""
    if SERVER is None or not data_dir or not settings_defaults.is_test_data_dir(data_dir):
        return {}
    # Empty: entrypoint.sh migrates it as on a real first start (and restore wants it empty).
    name = database_name(data_dir)
    return {"DATABASE_URL": SERVER.create_database(name), "SECRET_KEY": f"test-key-{name}"}


def drop_databases(names: set[str]) -> None:
    """Drop the databases a test made, and the lock engines of this process that used them."""
    from app.core import locks

    if SERVER is None:
        return
    for name in names:
        engine = locks._engines.pop(SERVER.database_url(name), None)
        if engine is not None:
            engine.dispose()
        SERVER.drop_database(name)
