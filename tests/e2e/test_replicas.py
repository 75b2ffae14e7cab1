"""Two pyshelf servers sharing one PostgreSQL database and one blob folder, as replicas behind a
load balancer would: they start together, see each other's uploads, and fetch a mirrored file
from upstream once between them.

These run in every pass: with PYSHELF_TEST_DATABASE=postgres on the session's server, otherwise
on a PostgreSQL server of their own (skipped when none is installed: `make postgres`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.services.pagecache import MAX_STALE_SECONDS
from tests import pgserver
from tests.builders import make_wheel, write_dist
from tests.conftest import LiveServer, http_request, run_pip
from tests.e2e.helpers import raw_upload, simple_json, twine_upload
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

StartServer = Callable[..., LiveServer]
DOWNLOADS = 8  # concurrent cold downloads of one file, half through each replica
MIRRORED_BYTES = 2 << 20  # 2 MiB, sent at 2 MiB/s: the downloads overlap
REQUESTS_PER_CHECK = 6  # new connections each: gunicorn spreads them over both workers
CHANGE_WAIT_SECONDS = 10  # past the bound: how long to wait for a change that never shows
FAST_UPSTREAM = {
    "UPSTREAM_CONNECT_TIMEOUT": "2",
    "UPSTREAM_READ_TIMEOUT": "5",
    "UPSTREAM_RETRIES": "0",
}


@pytest.fixture(scope="module")
def postgres() -> Iterator[pgserver.PostgresServer]:
    """The session's PostgreSQL server, or one started for this module."""
    if pgserver.SERVER is not None:
        yield pgserver.SERVER
        return
    if pgserver.find_bin_dir() is None:
        pytest.skip("PostgreSQL's server is not installed (make postgres)")
    server = pgserver.PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def replicas(
    server_factory: StartServer,
    postgres: pgserver.PostgresServer,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers started at the same moment on one new database and one blob folder."""
    name = f"replicas_{secrets.token_hex(6)}"
    shared = {
        "DATABASE_URL": postgres.create_database(name),
        "SECRET_KEY": secrets.token_hex(32),
        "STORAGE_URL": f"file://{tmp_path / 'shared-blobs'}",
        "MIRROR_URL": fake_upstream.url,
        **FAST_UPSTREAM,
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        started = list(
            pool.map(lambda n: server_factory(tmp_path / f"replica{n}", **shared), range(2))
        )
    yield started[0], started[1]
    for server in started:
        server.stop()
    postgres.drop_database(name)


def test_replicas_started_at_once_migrate_and_bootstrap_once(replicas) -> None:
    """One of them creates the admin and the indexes; both serve them."""
    logs = [server.log() for server in replicas]

    assert sum("bootstrap: created superuser admin" in log for log in logs) == 1
    assert all("database schema is up to date" in log for log in logs)
    for server in replicas:
        status, _headers, _body, reason = server.get("/admin/dev/+simple/")
        assert (status, reason) == (200, "OK")


def test_an_upload_through_one_replica_installs_through_the_other(replicas, tmp_path) -> None:
    first, second = replicas
    (tmp_path / "dist").mkdir()
    dist = write_dist(tmp_path / "dist", *make_wheel("replicated-app", "1.0"))

    published = twine_upload(first, "admin/dev", [dist])
    assert published.returncode == 0, published.stdout + published.stderr
    again = twine_upload(second, "admin/dev", [dist])  # an identical re-upload (warehouse: 200)
    assert again.returncode == 0, again.stdout + again.stderr

    target = tmp_path / "site"
    installed = run_pip(
        "install", "--target", str(target), "-i", f"{second.url}/admin/dev/+simple/",
        "replicated-app",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (target / "replicated_app").is_dir()


def test_concurrent_cold_downloads_on_both_replicas_fetch_upstream_once(
    replicas, fake_upstream
) -> None:
    """Single flight across machines: one upstream download; every client gets the bytes."""
    first, second = replicas
    files = {"shared_dep/payload.bin": os.urandom(MIRRORED_BYTES)}
    filename, data = make_wheel("shared-dep", "1.0", files=files)
    fake_upstream.add_file("shared-dep", filename, data)
    path = next(
        f["url"]
        for f in simple_json(first, "root/pypi", "shared-dep")["files"]
        if f["filename"] == filename
    )
    simple_json(second, "root/pypi", "shared-dep")  # both have the page: only files race
    fake_upstream.throttle_bytes_per_second = MIRRORED_BYTES  # about a second per download

    def download(n: int) -> tuple[int, bytes]:
        server = replicas[n % 2]
        status, _headers, body, _reason = http_request(server.url + path, timeout=60)
        return status, body

    with ThreadPoolExecutor(max_workers=DOWNLOADS) as pool:
        results = list(pool.map(download, range(DOWNLOADS)))

    assert [status for status, _body in results] == [200] * DOWNLOADS
    assert all(body == data for _status, body in results)
    assert fake_upstream.count("/files/") == 1
    fake_upstream.throttle_bytes_per_second = None
    for server in replicas:  # and now both serve it from the shared store
        status, _headers, body, _reason = server.get(path)
        assert (status, body) == (200, data)
    assert fake_upstream.count("/files/") == 1


def test_a_change_through_one_replica_shows_on_the_other_within_the_bound(replicas) -> None:
    """Each worker keeps copies of stored pages (app/services/pagecache.py): after an upload
    through one replica, every request to the other that starts MAX_STALE_SECONDS after the
    upload's answer lists the new file, and none after it goes back to the old page."""
    first, second = replicas
    old, old_data = make_wheel("bounded-app", "1.0")
    new, new_data = make_wheel("bounded-app", "2.0")
    assert raw_upload(first, "admin/dev", old, old_data)[0] == 200
    for _ in range(REQUESTS_PER_CHECK):  # the page stored, and copied by the workers that answer
        assert listed(second, "bounded-app") == {old}

    assert raw_upload(first, "admin/dev", new, new_data)[0] == 200
    committed = time.monotonic()
    stale_starts, fresh = [], 0  # seconds after the commit that stale requests started
    deadline = committed + MAX_STALE_SECONDS + CHANGE_WAIT_SECONDS
    while fresh < REQUESTS_PER_CHECK and time.monotonic() < deadline:
        started = time.monotonic()
        if listed(second, "bounded-app") == {old, new}:
            fresh += 1
        else:
            assert fresh == 0, "a replica went back to the old page"
            stale_starts.append(round(started - committed, 3))
        time.sleep(0.01)

    assert fresh == REQUESTS_PER_CHECK
    assert all(late <= MAX_STALE_SECONDS for late in stale_starts), stale_starts


def listed(server: LiveServer, project: str) -> set[str]:
    """The filenames on a project's JSON page of admin/dev (a new connection each time)."""
    return {f["filename"] for f in simple_json(server, "admin/dev", project)["files"]}
