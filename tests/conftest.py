"""Fixtures: settings and app for unit tests; the real server, pip and twine for e2e tests."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app import create_app
from app.core.config import Settings
from app.data.db import Database
from app.ops.prepare import bootstrap, migrate
from tests import pgserver, s3server, settings_defaults
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
# PYSHELF_TEST_DATABASE=postgres runs the tests against a throwaway PostgreSQL server.
TEST_DATABASE = os.environ.get("PYSHELF_TEST_DATABASE", "").strip().lower() or "sqlite"
# PYSHELF_TEST_STORAGE=s3 keeps the blobs in a bucket of a local S3 server (moto) instead.
TEST_STORAGE = os.environ.get("PYSHELF_TEST_STORAGE", "").strip().lower() or "local"
ADMIN_PASSWORD = "admin-secret-pw"
# Fake upstreams listen on loopback, which pyshelf refuses by default (app/core/egress.py): tests
# allow it unless they set UPSTREAM_ALLOW_PRIVATE themselves (to "" to see the refusal).
TEST_ALLOW_PRIVATE = ("127.0.0.0/8", "::1/128")
START_TIMEOUT_SECONDS = 60


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no PIP_*, TWINE_* or pyshelf variables leak in."""
    prefixes = ("PIP_", "TWINE_", "UV_")
    names = {
        "DATA_DIR",
        "DATABASE_URL",
        "ADMIN_USER",
        "ADMIN_PASSWORD",
        "MIRROR_URL",
        "PORT",
        "HOST",
        "SECRET_KEY",
        "MAX_UPLOAD_SIZE",
        "WEB_CONCURRENCY",
        "MIRROR_CACHE_EXPIRY",
        "STORAGE_URL",
        "S3_ENDPOINT_URL",
        "S3_REDIRECT",
        "UPSTREAM_ALLOW_PRIVATE",
        "MIRROR_FILE_HOSTS",
        "MIRROR_CREATE",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in names}
    env["PIP_CONFIG_FILE"] = os.devnull  # the machine-wide pip config must not add indexes
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["ENV_FILE"] = os.devnull  # never read a developer's .env
    env["UPSTREAM_ALLOW_PRIVATE"] = ",".join(TEST_ALLOW_PRIVATE)
    if "DATABASE_URL" not in extra:  # PostgreSQL runs: the data dir's own database
        env.update(pgserver.database_env(extra.get("DATA_DIR")))
    if "STORAGE_URL" not in extra:  # S3 runs: the data dir's own bucket
        env.update(s3server.storage_env(extra.get("DATA_DIR")))
    env.update(extra)
    return env


PORT_ATTEMPTS = 3  # a server whose port another process took starts again on a new one
SCHEMES = ("http", "https")  # how gunicorn names the address it listens at (TLS_CERT: https)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def basic_auth(user: str, password: str) -> str:
    """An Authorization header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class LiveServer:
    """pyshelf started through entrypoint.sh (gunicorn, two workers) on a loopback port."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **env: str) -> LiveServer:
        """Start (or restart with changed env) and wait for /+status; on another port when
        another process took this one between free_port() and the server's bind."""
        self.env.update(env)
        for _attempt in range(PORT_ATTEMPTS):
            if self._start_on_port():
                return self
            self.port = free_port()
        raise RuntimeError(f"no free port in {PORT_ATTEMPTS} attempts:\n{self.log()}")

    def _start_on_port(self) -> bool:
        """Start on self.port and wait until it answers /+status: True; False when the port
        was taken (by another test's server: its answers are not ours)."""
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server process owns it
        started_at = log.tell()  # a restart appends: only what this start printed counts
        self.process = subprocess.Popen(
            [str(ROOT / "entrypoint.sh"), "serve"],
            cwd=ROOT,
            env=clean_env(
                DATA_DIR=str(self.data_dir),
                PORT=str(self.port),
                HOST="127.0.0.1",
                PYSHELF_PYTHON=sys.executable,
                **self.env,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        listening = [f"Listening at: {scheme}://127.0.0.1:{self.port} (" for scheme in SCHEMES]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                printed = self.log(since=started_at)
                # pyshelf's own check before it starts, or gunicorn's bind after it
                if (
                    "is already in use by another program" in printed
                    or "Connection in use" in printed
                ):
                    return False
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/+status", timeout=2) as response:
                    printed = self.log(since=started_at)
                    if response.status == 200 and any(line in printed for line in listening):
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {START_TIMEOUT_SECONDS} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def log(self, since: int = 0) -> str:
        """Everything the server printed so far (from byte `since` of its log)."""
        if not self.log_path:
            return ""
        return self.log_path.read_bytes()[since:].decode(errors="replace")

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def get(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes, str]:
        """One request without following redirects: (status, headers, body, reason)."""
        return http_request(self.url + path, headers=headers, method=method, data=data)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def http_request(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    data: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes, str]:
    """An HTTP request that returns errors instead of raising and never follows redirects."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read(), response.reason
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read(), exc.reason


# The slowest test files, slowest first (measured by a whole run on two xdist workers; update
# when a file's cost changes a lot). They are handed out first, the rest after them, so the run
# does not end with one long file on one worker while the other has nothing left
# (`--dist loadfile --no-loadscope-reorder` in the Makefile keeps this order).
SLOWEST_FILES = (
    "tests/e2e/test_mirror.py",
    "tests/test_command.py",
    "tests/e2e/test_bundles.py",
    "tests/e2e/test_private_read.py",
    "tests/robustness/test_faults.py",
    "tests/e2e/test_page_cache.py",
    "tests/robustness/test_hostile_input.py",
    "tests/e2e/test_supply_chain_guard.py",
    "tests/e2e/test_bootstrap.py",
    "tests/e2e/test_mirror_metadata.py",
    "tests/test_api.py",
    "tests/browser/test_pages.py",
    "tests/e2e/test_operations.py",
    "tests/e2e/test_devpi.py",
    "tests/test_upload.py",
    "tests/test_devpi.py",
    "tests/e2e/test_ssrf.py",
    "tests/web/test_docs.py",
    "tests/test_storage.py",
    "tests/test_mirror.py",
    "tests/web/test_pages.py",
    "tests/e2e/test_provenance.py",
    "tests/web/test_login.py",
    "tests/test_backup.py",
    "tests/robustness/test_slow_clients.py",
    "tests/e2e/test_start_checks.py",
    "tests/e2e/test_s3_storage.py",
    "tests/e2e/test_management.py",
    "tests/robustness/test_web_security.py",
    "tests/browser/test_refusals.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slowest files first (SLOWEST_FILES), each file's tests in their own order."""
    rank = {path: number for number, path in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Remember each phase's outcome on the test item (so fixtures can print logs on failure)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _allow_loopback_upstreams(settings: Settings) -> None:
    if not settings.upstream_allow_private:
        object.__setattr__(settings, "upstream_allow_private", TEST_ALLOW_PRIVATE)
    # The test client never closes a response, so nothing would run after it: apps built in
    # this process index for search before their response. Live servers (e2e) use the queue.
    object.__setattr__(settings, "search_index_in_request", True)


@pytest.fixture(scope="session", autouse=True)
def allow_loopback_upstreams() -> Iterator[None]:
    """Settings built in this process for a test data dir may reach loopback fake upstreams,
    and index for search before their responses."""
    settings_defaults.register(_allow_loopback_upstreams)
    yield
    settings_defaults.unregister(_allow_loopback_upstreams)


@pytest.fixture(scope="session", autouse=True)
def test_database() -> Iterator[str]:
    """The database kind under test; for postgres, one server for the whole session."""
    if TEST_DATABASE == "sqlite":
        yield TEST_DATABASE
        return
    if TEST_DATABASE not in ("postgres", "postgresql"):
        raise pytest.UsageError(f"PYSHELF_TEST_DATABASE={TEST_DATABASE!r}: use sqlite or postgres")
    pgserver.activate()
    try:
        yield "postgresql"
    finally:
        pgserver.deactivate()


@pytest.fixture(autouse=True)
def _test_databases(request: pytest.FixtureRequest) -> Iterator[None]:
    """PostgreSQL runs: a database per data dir, migrated unless the test is marked
    empty_database; dropped when the test ends (its servers are stopped by then)."""
    server = pgserver.SERVER
    if server is None:
        yield
        return
    before = set(server.created)
    pgserver.EMPTY = request.node.get_closest_marker("empty_database") is not None
    try:
        yield
    finally:
        pgserver.EMPTY = False
        pgserver.drop_databases(server.created - before)


@pytest.fixture(scope="session", autouse=True)
def test_storage() -> Iterator[str]:
    """The blob store under test; for s3, one moto server for the whole session."""
    if TEST_STORAGE == "local":
        yield TEST_STORAGE
        return
    if TEST_STORAGE != "s3":
        raise pytest.UsageError(f"PYSHELF_TEST_STORAGE={TEST_STORAGE!r}: use local or s3")
    s3server.activate()
    try:
        yield "s3"
    finally:
        s3server.deactivate()


@pytest.fixture(autouse=True)
def _drop_test_buckets() -> Iterator[None]:
    """S3 runs: delete the buckets a test made when it ends."""
    server = s3server.SERVER
    before = set(server.created) if server else set()
    yield
    if server is not None:
        s3server.drop_buckets(server.created - before)


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A fake PyPI on 127.0.0.1 that tests fill with packages they build."""
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """Start servers with custom env; all are stopped (and their logs shown on failure)."""
    servers: list[LiveServer] = []

    def start(data_dir: Path | None = None, **env: str) -> LiveServer:
        env.setdefault("ADMIN_PASSWORD", ADMIN_PASSWORD)
        env.setdefault("MIRROR_URL", "http://127.0.0.1:9/simple/")  # nothing listens there
        env.setdefault("WEB_CONCURRENCY", "2")
        env.setdefault("THREADS", "4")
        server = LiveServer(data_dir or tmp_path / f"data{len(servers)}", dict(env))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for server in servers:
            print(f"--- server log ({server.url}) ---\n{server.log()[-20000:]}")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per test module, with a mirror pointing at nothing (stage tests)."""
    data_dir = tmp_path_factory.mktemp("live") / "data"
    server = LiveServer(
        data_dir,
        {
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MIRROR_URL": "http://127.0.0.1:9/simple/",
            "WEB_CONCURRENCY": "2",
            "THREADS": "4",
        },
    )
    server.start()
    yield server
    server.stop()


def run_pip(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the venv's real pip with no machine-wide configuration."""
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-cache-dir", "--disable-pip-version-check"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_twine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real twine, never interactive."""
    return subprocess.run(
        [sys.executable, "-m", "twine", *args, "--non-interactive", "--disable-progress-bar"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- unit-test fixtures -------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a temporary data directory and an upstream that refuses connections."""
    return Settings(
        data_dir=tmp_path / "data",
        admin_password=ADMIN_PASSWORD,
        mirror_url="http://127.0.0.1:9/simple/",
        upstream_connect_timeout_seconds=2,
        upstream_read_timeout_seconds=5,
        upstream_retries=0,
        max_upload_bytes=2 << 20,  # 2 MiB, so oversize tests stay small
    )


@pytest.fixture
def app(settings: Settings) -> object:
    """A migrated, bootstrapped app (admin, root/pypi, admin/dev)."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    database = Database(settings.database_url)
    with database.session() as session:
        bootstrap(session, settings, out=open(os.devnull, "w"))  # noqa: SIM115
    database.engine.dispose()
    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app: object) -> object:
    """Flask's test client for the app."""
    return app.test_client()  # type: ignore[attr-defined]


@pytest.fixture
def admin_auth() -> dict[str, str]:
    """Headers carrying the admin's Basic credentials."""
    return {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
