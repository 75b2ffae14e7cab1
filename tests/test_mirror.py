"""Tests of app/services/mirror/ (the caching policy) through the Flask test client and a fake
upstream.

Stale-if-error (RFC 5861), revalidation (RFC 9110 §13.1.2), negative caching and single-flight
downloads. The live-server side (gunicorn workers, pip, SIGKILL) is in tests/e2e/test_mirror.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import io
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from app import create_app
from app.core.config import Settings
from app.core.locks import Lock, Locks
from app.core.metrics import REGISTRY
from app.core.storage_local import LocalStorage
from app.core.upstream import UpstreamError
from app.data.db import Database
from app.data.models import (
    CachedPage,
    Index,
    MirrorFile,
    MirrorPage,
    MirrorSidecar,
    MirrorStats,
    User,
)
from app.http.errors import from_mirror
from app.http.simple import STALE_HEADER
from app.ops.integrity import Verifier
from app.ops.prepare import bootstrap, migrate
from app.services.indexes import get_index_by_path
from app.services.mirror import (
    Blob,
    Mirror,
    NotListed,
    StillFetching,
    Stream,
    UpstreamFailed,
    UpstreamTimedOut,
)
from app.services.mirror.stats import flush_at_exit
from tests.blobs import stored_blob
from tests.builders import make_wheel, wheel_metadata
from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.fake_upstream import FakeUpstream
from tests.test_files import Views

MIME_JSON = "application/vnd.pypi.simple.v1+json"
JSON = {"Accept": MIME_JSON}
ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}  # refreshing needs a login


def sha256(data: bytes) -> str:
    """Lowercase hex sha256."""
    return hashlib.sha256(data).hexdigest()


class Clock:
    """A settable `utcnow` for app.services.mirror.pages: freshness without sleeping."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, 12, 0, 0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Mirror freshness decisions read this clock."""
    fake_clock = Clock()
    monkeypatch.setattr("app.services.mirror.pages.utcnow", fake_clock)
    return fake_clock


@pytest.fixture
def mirror_settings(settings: Settings, fake_upstream: FakeUpstream) -> Settings:
    """The unit-test settings with root/pypi mirroring the fake upstream (short timeouts)."""
    return dataclasses.replace(
        settings,
        mirror_url=fake_upstream.url,
        mirror_cache_expiry_seconds=60,
        mirror_not_found_seconds=10,
        upstream_connect_timeout_seconds=1,
        upstream_read_timeout_seconds=1,
        upstream_retries=0,
    )


@pytest.fixture
def mirror_app(mirror_settings: Settings, clock: Clock) -> Any:
    """A bootstrapped app whose root/pypi mirrors the fake upstream."""
    mirror_settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(mirror_settings)
    database = Database(mirror_settings.database_url)
    with database.session() as session, open(os.devnull, "w") as devnull:
        bootstrap(session, mirror_settings, out=devnull)
    database.engine.dispose()
    app = create_app(mirror_settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def mc(mirror_app: Any) -> Any:
    """The test client of `mirror_app`."""
    return mirror_app.test_client()


@pytest.fixture
def demo(fake_upstream: FakeUpstream) -> tuple[str, bytes]:
    """mirror-demo 1.0.0 on the fake upstream, with its PEP 658 sidecar."""
    filename, data = make_wheel(
        "mirror-demo", "1.0.0", files={"mirror_demo/x.bin": os.urandom(3000)}
    )
    fake_upstream.add_file("mirror-demo", filename, data, metadata=wheel_metadata(data))
    return filename, data


def the_mirror(app: Any) -> Mirror:
    """The app's Mirror service."""
    return app.extensions["pyshelf.mirror"]


def file_url(client: Any, filename: str, project: str = "mirror-demo") -> str:
    """The local +f URL root/pypi's page gives a file."""
    response = client.get(f"/root/pypi/+simple/{project}/", headers=JSON)
    assert response.status_code == 200, response.status
    return next(f["url"] for f in response.get_json()["files"] if f["filename"] == filename)


def stored(app: Any, data: bytes) -> bool:
    """Whether the blob store holds `data`."""
    return app.extensions["pyshelf.storage"].exists(sha256(data))


def part_files(settings: Settings) -> list[Path]:
    """What is left in the mirror's part-file directory."""
    return sorted((settings.tmp_dir / "mirror").glob("*"))


def drain(chunks: Iterable[bytes], into: list[bytes]) -> None:
    """Read a streamed body into `into`, chunk by chunk, until it ends or raises."""
    for chunk in chunks:
        into.append(chunk)


def download_stem(settings: Settings, key: str) -> str:
    """What root/pypi's download of `key` names its lock and part file after (per mirror)."""
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            index_id = session.scalar(
                select(Index.id).join(User).where(User.username == "root", Index.name == "pypi")
            )
    finally:
        database.engine.dispose()
    return f"{index_id}-{key}"


def held_by_pypi(app: Any, data: bytes) -> None:
    """What a leader records before it unlocks: root/pypi holds `data` (fetched it itself)."""
    settings = app.config["PYSHELF_SETTINGS"]
    index_id = int(download_stem(settings, "").rstrip("-"))
    assert the_mirror(app).cache.record(index_id, sha256(data), len(data))


def lock_is_free(settings: Settings, key: str) -> bool:
    """Whether nobody holds root/pypi's download lock of `key`."""
    lock = Locks.of(settings).exclusive(f"file-{download_stem(settings, key)}")
    try:
        return lock.try_acquire()
    finally:
        lock.close()


# --- pages: freshness, negative cache, revalidation, stale-if-error ------------------------------


def test_a_fresh_page_is_served_from_the_cache(mc, fake_upstream, demo, clock):
    """Issue item 2: within mirror_cache_expiry the upstream is not asked again."""
    for _ in range(3):
        response = mc.get("/root/pypi/+simple/mirror-demo/", headers=JSON)
        assert response.status == "200 OK"
        clock.advance(20)
    assert fake_upstream.count("/simple/mirror-demo/") == 1
    assert fake_upstream.count("/simple/") == 1  # never the project list


def test_an_expired_page_is_revalidated_and_a_304_renews_it(
    mirror_app, mc, fake_upstream, demo, clock
):
    """Upstream If-None-Match/If-Modified-Since (RFC 9110 §13.1); a 304 keeps page and files."""
    mc.get("/root/pypi/+simple/mirror-demo/")
    clock.advance(61)
    response = mc.get("/root/pypi/+simple/mirror-demo/", headers=JSON)
    assert response.status == "200 OK"
    assert STALE_HEADER not in response.headers
    assert [f["filename"] for f in response.get_json()["files"]] == [demo[0]]
    first, second = fake_upstream.headers_for("/simple/mirror-demo/")
    assert "if-none-match" not in first
    assert second["if-none-match"].startswith('"')
    assert second["if-modified-since"].endswith("GMT")
    with Database(mirror_app.config["PYSHELF_SETTINGS"].database_url).session() as session:
        page = session.scalar(select(MirrorPage).where(MirrorPage.normalized_name == "mirror-demo"))
        assert page.checked_at == clock.now  # renewed by the 304
        assert page.fetched_at < clock.now  # content unchanged since the first fetch
    clock.advance(30)
    mc.get("/root/pypi/+simple/mirror-demo/")
    assert fake_upstream.count("/simple/mirror-demo/") == 2  # fresh again after the 304


def test_the_per_index_expiry_overrides_the_default(mc, fake_upstream, demo, clock, admin_auth):
    """Issue item 2: mirror_cache_expiry per index; 0 revalidates on every request."""
    response = mc.patch("/root/pypi", json={"mirror_cache_expiry": 0}, headers=admin_auth)
    assert response.status_code == 200, response.status
    for _ in range(3):
        assert mc.get("/root/pypi/+simple/mirror-demo/").status_code == 200
    assert fake_upstream.count("/simple/mirror-demo/") == 3


def test_an_upstream_404_is_cached_for_the_not_found_expiry(mc, fake_upstream, clock):
    """A 404 is remembered for MIRROR_NOT_FOUND_EXPIRY; then a new project is found."""
    for _ in range(2):
        response = mc.get("/root/pypi/+simple/soon/")
        assert response.status_code == 404
        assert response.headers["Cache-Control"] == "no-store"
    filename, data = make_wheel("soon", "1.0")
    fake_upstream.add_file("soon", filename, data)
    clock.advance(9)
    assert mc.get("/root/pypi/+simple/soon/").status_code == 404
    assert fake_upstream.count("/simple/soon/") == 1
    clock.advance(2)
    assert mc.get("/root/pypi/+simple/soon/").status_code == 200
    assert fake_upstream.count("/simple/soon/") == 2


def test_every_upstream_answer_is_recorded_with_what_it_brought(
    mirror_app, mc, fake_upstream, clock
):
    """/+status's upstream state: an answer (200, 304 or 404) sets last_ok_at in the page's own
    transaction, a failure last_error_at; the later of the two says how the upstream is."""

    def stats() -> tuple[Any, Any]:
        with mirror_app.extensions["pyshelf.db"].session() as session:
            row = session.scalar(select(MirrorStats))
            return row.last_ok_at, row.last_error_at

    assert mc.get("/root/pypi/+simple/nothing-here/").status_code == 404
    assert stats() == (clock.now, None)
    clock.advance(60)
    fake_upstream.fail("503")
    assert mc.get("/root/pypi/+simple/other/").status_code == 502
    ok_at, error_at = stats()
    assert ok_at < error_at == clock.now
    clock.advance(60)
    fake_upstream.fail(None)
    assert mc.get("/root/pypi/+simple/third/").status_code == 404
    assert stats() == (clock.now, error_at)


def test_the_mirror_project_list_shows_cached_projects_only(mc, fake_upstream, demo):
    """No upstream list; cached pages listed, remembered 404s not."""
    mc.get("/root/pypi/+simple/mirror-demo/")
    mc.get("/root/pypi/+simple/not-upstream/")
    response = mc.get("/root/pypi/+simple/", headers=JSON)
    assert [p["name"] for p in response.get_json()["projects"]] == ["mirror-demo"]
    assert fake_upstream.requests["/simple/"] == 0


@pytest.mark.parametrize("fault", ["503", "reset", "down"])
def test_upstream_failure_serves_the_stale_page_with_a_header_and_a_log_line(
    mc, fake_upstream, demo, clock, caplog, fault
):
    """Stale-if-error (RFC 5861), X-Pyshelf-Stale and a warning; the cached file is still served."""
    url = file_url(mc, demo[0])
    assert mc.get(url).get_data() == demo[1]
    clock.advance(61)
    if fault == "down":
        fake_upstream.stop()
    else:
        fake_upstream.fail(fault)
    with caplog.at_level(logging.WARNING, logger="app.services.mirror"):
        response = mc.get("/root/pypi/+simple/mirror-demo/")
        assert response.status == "200 OK"
        assert response.headers[STALE_HEADER] == "root/pypi"
        assert demo[0] in response.get_data(as_text=True)
        # A cached file is found by the sha256 in its URL: served without the page.
        response = mc.get(url)
        assert (response.status_code, response.get_data()) == (200, demo[1])
    assert "serving stale root/pypi/mirror-demo" in caplog.text


@pytest.mark.parametrize(("fault", "status"), [("503", 502), ("reset", 502), ("slow", 504)])
def test_an_unknown_project_with_a_failing_upstream_is_a_502_or_504_naming_it(
    mc, fake_upstream, fault, status
):
    """Nothing cached → 502/504 with Retry-After, not cached as missing."""
    if fault == "slow":
        fake_upstream.delay_seconds = 5  # beyond the 1 s read timeout
    else:
        fake_upstream.fail(fault)
    response = mc.get("/root/pypi/+simple/mirror-demo/")
    assert response.status_code == status
    assert response.status.split(" ", 1)[1].startswith("Upstream ")
    assert fake_upstream.url.removesuffix("/") in response.status
    assert response.headers["Retry-After"]
    assert response.headers["Cache-Control"] == "no-store"
    fake_upstream.delay_seconds = 0
    fake_upstream.fail(None)
    assert mc.get("/root/pypi/+simple/mirror-demo/").status_code == 404  # asked again: a 404


def test_refresh_marks_the_page_stale_and_the_next_request_refetches(mc, fake_upstream, demo):
    """Issue item 7: POST .../+simple/NAME/refresh; refreshing an uncached name is harmless."""
    mc.get("/root/pypi/+simple/mirror-demo/")
    newer, newer_data = make_wheel("mirror-demo", "2.0.0")
    fake_upstream.add_file("mirror-demo", newer, newer_data)
    assert newer not in mc.get("/root/pypi/+simple/mirror-demo/").get_data(as_text=True)
    response = mc.post("/root/pypi/+simple/mirror-demo/refresh", headers=ADMIN)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/root/pypi/+simple/mirror-demo/")
    assert newer in mc.get("/root/pypi/+simple/mirror-demo/").get_data(as_text=True)
    assert fake_upstream.count("/simple/mirror-demo/") == 2
    response = mc.post(
        "/admin/dev/+simple/other/refresh", headers={"Accept": "application/json", **ADMIN}
    )
    assert response.get_json() == {"refreshed": []}


def test_both_refresh_urls_refuse_an_index_without_a_mirror_behind_it(mirror_app, mc):
    """The simple API's refresh and the web's Refresh button are one rule: 400 with the reason."""
    mirror_app.config["WTF_CSRF_ENABLED"] = False  # the web form's token is not the point here
    assert mc.put("/admin/solo", json={"bases": []}, headers=ADMIN).status_code == 201
    reason = "admin/solo has no mirror in its bases; nothing to refresh."
    for path in ("/admin/solo/+simple/demo/refresh", "/admin/solo/demo/+refresh"):
        response = mc.post(path, headers={"Accept": "application/json", **ADMIN})
        assert response.status == f"400 {reason}", path


# --- files ----------------------------------------------------------------------------------------


def test_a_file_is_downloaded_once_verified_and_then_served_from_the_store(
    mirror_app, mc, fake_upstream, demo
):
    """RFC 8246: the first request fetches and stores; later ones are immutable hits."""
    url = file_url(mc, demo[0])
    first = mc.get(url)
    assert (first.status_code, first.get_data()) == (200, demo[1])
    assert first.headers["Content-Length"] == str(len(demo[1]))
    assert "Accept-Ranges" not in first.headers  # not while it streams
    assert stored(mirror_app, demo[1])
    second = mc.get(url, headers={"Range": "bytes=0-9"})
    assert (second.status_code, second.get_data()) == (206, demo[1][:10])
    assert "immutable" in second.headers["Cache-Control"]
    assert fake_upstream.count("/files/") == 1
    assert part_files(mirror_app.config["PYSHELF_SETTINGS"]) == []


def test_the_mirror_service_serves_files_without_a_request(mirror_app, fake_upstream, demo):
    """No Flask: a stream first (verified, cached as it goes), then the stored blob; a file the
    page does not list is NotListed, and the HTTP edge maps each failure to its status."""
    filename, data = demo
    mirror, key = the_mirror(mirror_app), sha256(data)
    database = mirror_app.extensions["pyshelf.db"]
    with database.session() as session:
        index = get_index_by_path(session, "root/pypi")
        first = mirror.serve_file(session, index, key, filename, is_metadata=False)
        assert isinstance(first, Stream)
        assert first.size == len(data)
        try:
            assert b"".join(first.chunks) == data
        finally:
            first.close()
        second = mirror.serve_file(session, index, key, filename, is_metadata=False)
        assert second == Blob(key, filename)
        with pytest.raises(NotListed, match=r"No such file on root/pypi: mirror_demo-9\.0"):
            mirror.serve_file(
                session, index, "0" * 64, "mirror_demo-9.0-py3-none-any.whl", is_metadata=False
            )
    assert fake_upstream.count("/files/") == 1
    timed_out = from_mirror(UpstreamTimedOut("Upstream timed out: slow", retry_after_seconds=30))
    assert (timed_out.status, timed_out.headers) == (504, {"Retry-After": "30"})
    assert from_mirror(UpstreamFailed("Upstream failed: 500")).status == 502
    assert from_mirror(StillFetching("busy", retry_after_seconds=5)).status == 503


def test_a_head_request_for_an_uncached_file_leaves_no_lock_behind(
    mirror_app, mc, fake_upstream, demo
):
    """HEAD never iterates the body; the download lock and part file must still go."""
    url = file_url(mc, demo[0])
    response = mc.head(url, buffered=True)  # closes the app iterable, as gunicorn does
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(demo[1]))
    assert "Accept-Ranges" not in response.headers
    settings = mirror_app.config["PYSHELF_SETTINGS"]
    assert lock_is_free(settings, sha256(demo[1]))
    assert part_files(settings) == []
    response = mc.get(url)
    assert (response.status_code, response.get_data()) == (200, demo[1])
    assert stored(mirror_app, demo[1])


def test_a_client_that_leaves_mid_download_still_leaves_the_file_cached(
    mirror_app, mc, fake_upstream
):
    """The download the first client started is finished for the next one (and pip's
    resumed retry), verified and stored, though that client went away after one chunk."""
    filename, data = make_wheel("big-demo", "1.0", files={"big_demo/x.bin": os.urandom(3 << 20)})
    fake_upstream.add_file("big-demo", filename, data)
    response = mc.get(file_url(mc, filename, "big-demo"), buffered=False)
    first = next(iter(response.response))
    assert first == data[: len(first)]
    assert not stored(mirror_app, data)
    response.close()  # what the WSGI server does when the client's socket is gone
    assert stored(mirror_app, data)
    settings = mirror_app.config["PYSHELF_SETTINGS"]
    assert part_files(settings) == []
    assert lock_is_free(settings, sha256(data))
    assert fake_upstream.count("/files/") == 1


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_bad_bytes_raise_before_the_last_chunk_and_nothing_is_kept(
    mirror_app, mc, fake_upstream, demo, caplog, fault
):
    """The client never gets the complete file; no blob, no part file, lock released."""
    url = file_url(mc, demo[0])
    getattr(fake_upstream, fault).add(demo[0])
    # The small file is one chunk, held back: the error comes before any byte (the WSGI server
    # then cuts the connection after the 200 status line; the e2e test sees that side).
    with pytest.raises(UpstreamError):
        mc.get(url).get_data()
    assert not stored(mirror_app, demo[1])
    settings = mirror_app.config["PYSHELF_SETTINGS"]
    assert part_files(settings) == []
    assert lock_is_free(settings, sha256(demo[1]))
    assert "not cached" in caplog.text
    getattr(fake_upstream, fault).discard(demo[0])
    assert mc.get(url).get_data() == demo[1]
    assert stored(mirror_app, demo[1])


def test_a_metadata_transfer_that_stalls_is_a_504_not_a_500(mirror_app, mc, fake_upstream, demo):
    """Issue item 6: a read timeout in the sidecar's body is an upstream error, never a 500."""
    url = file_url(mc, demo[0]) + ".metadata"
    mirror_app.extensions["pyshelf.upstream"].read_timeout_seconds = 0.3
    fake_upstream.throttle_bytes_per_second = 1  # a byte, then a second's pause
    response = mc.get(url)
    assert response.status_code == 504
    assert response.status.split(" ", 1)[1].startswith("Upstream timed out")


def test_concurrent_cold_requests_for_a_sidecar_fetch_it_once(mirror_app, fake_upstream, demo):
    """Single-flight for PEP 658 sidecars too (uv asks for many at once)."""
    url = file_url(mirror_app.test_client(), demo[0]) + ".metadata"
    fake_upstream.delay_seconds = 0.3  # every request overlaps the first fetch
    with ThreadPoolExecutor(max_workers=6) as pool:
        bodies = list(pool.map(lambda _: mirror_app.test_client().get(url).get_data(), range(6)))
    assert bodies == [wheel_metadata(demo[1])] * 6
    assert fake_upstream.count("/files/") == 1


def test_metadata_is_fetched_once_and_checked_against_its_hash(mirror_app, mc, fake_upstream, demo):
    """PEP 658: FILE.metadata byte-for-byte, cached; served without fetching the wheel."""
    url = file_url(mc, demo[0]) + ".metadata"
    for _ in range(2):
        response = mc.get(url)
        assert (response.status_code, response.get_data()) == (200, wheel_metadata(demo[1]))
    assert fake_upstream.count("/files/") == 1
    assert stored(mirror_app, wheel_metadata(demo[1]))


def test_a_file_upstream_lists_without_a_hash_is_passed_through_not_cached(
    mirror_app, mc, fake_upstream, demo
):
    """Unverifiable bytes are streamed but never stored, even while a lock is held."""
    file_url(mc, demo[0])
    settings = mirror_app.config["PYSHELF_SETTINGS"]
    database = Database(settings.database_url)
    with database.session() as session:
        page = session.scalar(select(MirrorPage).where(MirrorPage.normalized_name == "mirror-demo"))
        page.files = [{**page.files[0], "sha256": None}]
        session.commit()
    url_key = sha256(page.files[0]["url"].encode())
    url = f"/root/pypi/+f/{url_key}/{demo[0]}"
    assert (
        mc.get("/root/pypi/+simple/mirror-demo/", headers=JSON).get_json()["files"][0]["hashes"]
        == {}
    )
    busy = Locks.of(settings).exclusive(f"file-{url_key}")
    assert busy.try_acquire()  # as if another worker were downloading it
    try:
        for _ in range(2):
            response = mc.get(url)
            assert (response.status_code, response.get_data()) == (200, demo[1])
    finally:
        busy.close()
    assert fake_upstream.count("/files/") == 2
    assert not stored(mirror_app, demo[1])


# --- following another worker's download ----------------------------------------------------------


def _follow_setup(mirror_app: Any, mc: Any, demo: tuple[str, bytes]) -> tuple[str, Path, Lock]:
    """Play the leading worker: hold the lock of demo's file; return its URL and part path."""
    url = file_url(mc, demo[0])
    settings = mirror_app.config["PYSHELF_SETTINGS"]
    stem = download_stem(settings, sha256(demo[1]))
    leader = Locks.of(settings).exclusive(f"file-{stem}")
    assert leader.try_acquire()
    part = settings.tmp_dir / "mirror" / f"{stem}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    return url, part, leader


def test_a_follower_streams_the_part_file_and_ends_with_the_committed_blob(
    mirror_app, mc, fake_upstream, demo
):
    """A request that finds a download in flight follows it; upstream is asked once."""
    url, part, leader = _follow_setup(mirror_app, mc, demo)
    data = demo[1]
    part.write_bytes(data[:1000])
    try:
        response = mc.get(url, buffered=False)
        chunks = iter(response.response)
        received = next(chunks)
        assert received == data[:999]  # the final byte is always held back
        with part.open("ab") as grow:
            grow.write(data[1000:])
        received += next(chunks)
        assert received == data[:-1]
        mirror_app.extensions["pyshelf.storage"].commit_temp(sha256(data), part)  # the rename
        held_by_pypi(mirror_app, data)
    finally:
        leader.close()
    received += b"".join(chunks)
    assert received == data
    assert fake_upstream.count("/files/") == 0


def test_a_follower_never_completes_a_file_whose_earlier_bytes_were_wrong(
    mirror_app, mc, fake_upstream, demo
):
    """Bytes from a failed leader's part must not be finished with a good blob."""
    url, part, leader = _follow_setup(mirror_app, mc, demo)
    data = demo[1]
    part.write_bytes(bytes(b ^ 0xFF for b in data[:1000]))  # a bad download in flight
    try:
        response = mc.get(url, buffered=False)
        chunks = iter(response.response)
        received = next(chunks)
        assert len(received) == 999
        # The bad leader fails; a new one writes a new part file and commits the right bytes.
        part.unlink()
        part.write_bytes(data)
        mirror_app.extensions["pyshelf.storage"].save(sha256(data), io.BytesIO(data))
        held_by_pypi(mirror_app, data)
    finally:
        leader.close()
    rest: list[bytes] = []
    with pytest.raises(UpstreamError, match="differ from the stored file"):
        drain(chunks, rest)
    assert len(received + b"".join(rest)) < len(data)


def test_a_follower_of_a_killed_leader_fails_instead_of_waiting(mirror_app, mc, demo):
    """When the lock is released without a blob, followers stop (the client retries)."""
    url, part, leader = _follow_setup(mirror_app, mc, demo)
    part.write_bytes(demo[1][:500])
    response = mc.get(url, buffered=False)
    chunks = iter(response.response)
    assert len(next(chunks)) == 499
    leader.close()  # what the kernel does when a worker dies
    with pytest.raises(UpstreamError, match="failed in another worker"):
        next(chunks)


def test_a_new_leader_replaces_a_part_file_left_by_a_killed_worker(mirror_app, mc, demo):
    """After kill -9, a leftover part file is not reused in place, and never served."""
    url = file_url(mc, demo[0])
    settings = mirror_app.config["PYSHELF_SETTINGS"]
    part = settings.tmp_dir / "mirror" / f"{download_stem(settings, sha256(demo[1]))}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"left by a killed worker")
    inode = part.stat().st_ino
    with part.open("rb") as reader:  # a follower of the dead leader still has it open
        response = mc.get(url)
        assert response.get_data() == demo[1]
        assert reader.read() == b"left by a killed worker"
    assert stored(mirror_app, demo[1])
    storage = mirror_app.extensions["pyshelf.storage"]
    if hasattr(storage, "local_path"):  # S3 copies the part file: there is no inode to compare
        assert storage.local_path(sha256(demo[1])).stat().st_ino != inode
    assert part_files(settings) == []


class CopyingStorage:
    """A store that copies a finished temp file in (as an object store does): no rename."""

    def __init__(self, root: Path) -> None:
        self._local = LocalStorage(root)

    def open(self, key: str) -> Any:
        return self._local.open(key)

    def save(self, key: str, source: Any) -> None:
        self._local.save(key, source)

    def exists(self, key: str) -> bool:
        return self._local.exists(key)

    def delete(self, key: str) -> None:
        self._local.delete(key)

    def commit_temp(self, key: str, tmp_path: Path, *, replace: bool = False) -> None:
        with open(tmp_path, "rb") as source:  # a copy, as S3Storage uploads one
            self._local.save(key, source)
        tmp_path.unlink()


def test_a_store_without_rename_gets_a_copy_and_no_part_file_is_left(
    mirror_settings, mirror_app, fake_upstream, demo
):
    """Single-flight with any Storage: verified bytes are saved, followers check what they sent."""
    app = create_app(mirror_settings, storage=CopyingStorage(mirror_settings.blob_dir))
    app.config["TESTING"] = True
    client = app.test_client()
    url, part, leader = _follow_setup(app, client, demo)
    data = demo[1]
    part.write_bytes(data[:2000])
    try:
        response = client.get(url, buffered=False)
        chunks = iter(response.response)
        received = next(chunks)
        app.extensions["pyshelf.storage"].save(sha256(data), io.BytesIO(data))
        held_by_pypi(app, data)
    finally:
        leader.close()
    assert received + b"".join(chunks) == data
    part.unlink()

    other, other_data = make_wheel("mirror-demo", "2.0.0")
    fake_upstream.add_file("mirror-demo", other, other_data)
    client.post("/root/pypi/+simple/mirror-demo/refresh", headers=ADMIN)
    response = client.get(file_url(client, other))
    assert (response.status_code, response.get_data()) == (200, other_data)
    assert app.extensions["pyshelf.storage"].exists(sha256(other_data))
    assert part_files(mirror_settings) == []


# --- counters -------------------------------------------------------------------------------------


def test_counters_flush_on_a_miss_and_at_exit(mirror_app, mc, demo):
    """Issue item 10: misses are written at once; pending hits when the worker exits."""
    url = file_url(mc, demo[0])
    mc.get(url).get_data()
    mc.get(url).get_data()
    mc.get(url).get_data()
    database = Database(mirror_app.config["PYSHELF_SETTINGS"].database_url)

    def row() -> tuple[int, int, int]:
        with database.session() as session:
            stats = session.scalar(select(MirrorStats))
            return stats.hits, stats.misses, stats.bytes_fetched

    assert row() == (0, 1, len(demo[1]))
    counters = the_mirror(mirror_app).counters
    flush_at_exit(lambda: counters)  # what atexit calls in a gunicorn worker
    assert row() == (2, 1, len(demo[1]))


# --- cached files and sidecars in front of Flask (app/http/files.py CachedFiles) ------------------


@pytest.fixture
def mirror_views(mirror_app: Any) -> Views:
    """release_file of the mirror app, counted."""
    return Views(mirror_app)


@pytest.fixture
def mirrored(fake_upstream: Any) -> dict[str, Any]:
    """mirror-files 1.0 on the fake upstream, with its sidecar."""
    filename, data = make_wheel("mirror-files", "1.0", files={"m/x.bin": os.urandom(4000)})
    fake_upstream.add_file("mirror-files", filename, data, metadata=wheel_metadata(data))
    return {"filename": filename, "data": data, "metadata": wheel_metadata(data)}


def sidecars(app: Any) -> list[tuple[str, str]]:
    """The recorded (file sha256, sidecar sha256) pairs."""
    with app.extensions["pyshelf.db"].session() as session:
        rows = session.execute(select(MirrorSidecar.dist_sha256, MirrorSidecar.metadata_sha256))
        return [tuple(row) for row in rows]


def test_a_cached_mirror_file_is_sent_before_flask_and_counted_as_a_hit(
    mirror_app: Any, mc: Any, mirror_views: Views, fake_upstream: Any, mirrored: dict
) -> None:
    """The first request fetches through the view; the next is a hit in front of it."""
    url = file_url(mc, mirrored["filename"], "mirror-files")
    first = mc.get(url)
    assert (first.status_code, first.get_data(), mirror_views.calls) == (200, mirrored["data"], 1)
    second = mc.get(url)
    assert (second.status_code, second.get_data()) == (200, mirrored["data"])
    assert mirror_views.calls == (1 if mirror_views.fast_path else 2)
    counters = mirror_app.extensions["pyshelf.mirror"].counters
    assert sum(row[0] for row in counters.pending.values()) >= 1  # the hit, not yet flushed
    assert fake_upstream.count("/files/") == 1


def test_a_mirrored_sidecar_is_found_by_its_files_sha256_after_the_first_request(
    mirror_app: Any, mc: Any, mirror_views: Views, fake_upstream: Any, mirrored: dict
) -> None:
    """PEP 658: the first request decodes the page and records the sidecar; the next ones are sent
    by the file's key without Flask, byte-for-byte, and the upstream is asked once."""
    url = file_url(mc, mirrored["filename"], "mirror-files") + ".metadata"
    key = url.split("/+f/")[1].split("/")[0]
    digest = hashlib.sha256(mirrored["metadata"]).hexdigest()
    for _ in range(3):
        response = mc.get(url)
        assert (response.status_code, response.get_data()) == (200, mirrored["metadata"])
    assert mirror_views.calls == (1 if mirror_views.fast_path else 3)
    assert sidecars(mirror_app) == [(key, digest)]
    assert fake_upstream.count("/files/") == 1


def test_a_sidecar_the_upstream_corrects_is_fetched_again_not_served_stale(
    mirror_app: Any, mc: Any, fake_upstream: Any, mirrored: dict, clock: Any
) -> None:
    """When the upstream page lists the file with another metadata hash, the recorded
    sidecar is dropped and the new one fetched and checked against the new hash."""
    url = file_url(mc, mirrored["filename"], "mirror-files") + ".metadata"
    assert mc.get(url).get_data() == mirrored["metadata"]
    corrected = mirrored["metadata"] + b"Keywords: corrected\n"
    fake_upstream.add_file(
        "mirror-files", mirrored["filename"], mirrored["data"], metadata=corrected
    )
    clock.advance(3600)  # the cached page is due for a check
    assert mc.get("/root/pypi/+simple/mirror-files/", headers=JSON).status_code == 200

    again = mc.get(url)
    assert (again.status_code, again.get_data()) == (200, corrected)
    assert [digest for _, digest in sidecars(mirror_app)] == [hashlib.sha256(corrected).hexdigest()]


def test_an_evicted_sidecar_is_fetched_again_through_the_view(
    mirror_app: Any, mc: Any, mirror_views: Views, fake_upstream: Any, mirrored: dict
) -> None:
    """A recorded sidecar whose blob is gone is not a 404: the view fetches it again."""
    url = file_url(mc, mirrored["filename"], "mirror-files") + ".metadata"
    assert mc.get(url).status_code == 200
    stored_blob(mirror_app, hashlib.sha256(mirrored["metadata"]).hexdigest()).unlink()

    again = mc.get(url)
    assert (again.status_code, again.get_data()) == (200, mirrored["metadata"])
    assert fake_upstream.count("/files/") == 2


# --- cache writes the disk refuses (issue #15 item 12) ----------------------------------------


def write_failures(what: str) -> float:
    """pyshelf_cache_write_failures_total{what=WHAT} in this process."""
    value = REGISTRY.get_sample_value("pyshelf_cache_write_failures_total", {"what": what})
    return value or 0.0


def test_an_io_error_writing_the_part_file_sends_the_whole_file_uncached(
    mirror_app, mc, demo, monkeypatch
):
    """EIO while caching (no eviction helps there): the client still gets every verified byte,
    no part file or blob stays, and the failure is counted."""

    def broken(*_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("app.services.mirror.downloads.write_at", broken)
    before = write_failures("mirror")

    response = mc.get(file_url(mc, demo[0]))

    assert (response.status_code, response.get_data()) == (200, demo[1])
    assert not stored(mirror_app, demo[1])
    assert part_files(mirror_app.config["PYSHELF_SETTINGS"]) == []
    assert write_failures("mirror") == before + 1
    assert lock_is_free(mirror_app.config["PYSHELF_SETTINGS"], sha256(demo[1]))


def test_a_full_disk_sends_a_verified_sidecar_uncached(mirror_app, mc, demo, monkeypatch):
    """ENOSPC storing a PEP 658 sidecar, nothing to evict: the verified bytes are sent anyway,
    marked no-store, and nothing is recorded for them."""
    storage = mirror_app.extensions["pyshelf.storage"]

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "save", full)
    before = write_failures("metadata")

    response = mc.get(file_url(mc, demo[0]) + ".metadata")

    assert (response.status_code, response.get_data()) == (200, wheel_metadata(demo[1]))
    assert response.headers["Cache-Control"] == "no-store"
    assert not stored(mirror_app, wheel_metadata(demo[1]))
    assert sidecars(mirror_app) == []
    assert write_failures("metadata") == before + 1


# --- core metadata of cached files (a plain PEP 503 upstream: no sizes, no sidecars) -----------


@pytest.fixture
def plain(fake_upstream: FakeUpstream) -> dict[str, Any]:
    """plain-pkg 1.0 on an HTML-only upstream (PEP 503: no size), without a PEP 658 sidecar."""
    fake_upstream.html_only = True
    filename, data = make_wheel(
        "plain-pkg", "1.0", requires_dist=["dep>=2"], files={"p/x.bin": os.urandom(3000)}
    )
    fake_upstream.add_file("plain-pkg", filename, data)
    return {"filename": filename, "data": data, "metadata": wheel_metadata(data)}


def plain_entry(client: Any, index: str = "root/pypi") -> tuple[str, dict[str, Any]]:
    """(api-version, the wheel's entry) of plain-pkg's PEP 691 page on `index`."""
    response = client.get(f"/{index}/+simple/plain-pkg/", headers=JSON)
    assert response.status_code == 200, response.status
    document = response.get_json()
    return document["meta"]["api-version"], document["files"][0]


def test_a_wheel_cached_from_a_plain_upstream_offers_its_own_metadata_and_size(
    mirror_app, mc, plain, clock, fake_upstream
):
    """PEP 658/700/714: once cached, the wheel's METADATA is its sidecar, byte for byte, and its
    size is known; the page the page cache kept from before says so at once."""
    clock.now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # pages may be kept (page cache)
    plain_entry(mc)  # fetches the upstream page: this build is not kept (the data changed)
    version, entry = plain_entry(mc)
    assert (version, "size" in entry, entry["core-metadata"]) == ("1.0", False, False)
    assert mc.get(entry["url"] + ".metadata").status_code == 404
    with mirror_app.extensions["pyshelf.db"].session() as session:
        kept = session.scalars(select(CachedPage.normalized_name)).all()
    assert "plain-pkg" in kept  # the page cache holds the page without them

    assert mc.get(entry["url"]).get_data() == plain["data"]

    version, entry = plain_entry(mc)
    assert version == "1.4"
    assert entry["size"] == len(plain["data"])
    assert entry["core-metadata"] == {"sha256": sha256(plain["metadata"])}
    sidecar = mc.get(entry["url"] + ".metadata")
    assert (sidecar.status_code, sidecar.get_data()) == (200, plain["metadata"])
    html = mc.get("/root/pypi/+simple/plain-pkg/").get_data(as_text=True)
    assert f'data-core-metadata="sha256={sha256(plain["metadata"])}"' in html
    assert fake_upstream.count("/files/") == 1  # the sidecar never went upstream


def test_another_mirror_offers_no_metadata_it_did_not_read_itself(
    mirror_app, mc, plain, fake_upstream
):
    """A mirror serves only bytes it fetched (issue #15): root/pypi caching the wheel gives a
    second mirror of the same upstream neither the size nor the sidecar, until it fetches too."""
    created = mc.put(
        "/admin/m2", json={"type": "mirror", "mirror_url": fake_upstream.url}, headers=ADMIN
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    _version, entry = plain_entry(mc)
    assert mc.get(entry["url"]).get_data() == plain["data"]

    version, other = plain_entry(mc, "admin/m2")
    assert (version, "size" in other, other["core-metadata"]) == ("1.0", False, False)
    assert mc.get(other["url"] + ".metadata").status_code == 404

    assert mc.get(other["url"]).get_data() == plain["data"]
    _version, other = plain_entry(mc, "admin/m2")
    assert other["core-metadata"] == {"sha256": sha256(plain["metadata"])}
    assert mc.get(other["url"] + ".metadata").get_data() == plain["metadata"]


def test_a_wheel_whose_metadata_fails_the_upload_checks_is_served_without_a_sidecar(
    mirror_app, mc, fake_upstream, caplog
):
    """The upstream's file is served and cached as it is; METADATA naming another project
    (an upload would get a 400) is never offered as its sidecar."""
    fake_upstream.html_only = True
    filename, data = make_wheel("plain-pkg", "1.0", dist_name="someone-else")
    fake_upstream.add_file("plain-pkg", filename, data)
    _version, entry = plain_entry(mc)

    with caplog.at_level(logging.WARNING, logger="app.services.mirror_metadata"):
        assert mc.get(entry["url"]).get_data() == data

    _version, entry = plain_entry(mc)
    assert entry["size"] == len(data)
    assert entry["core-metadata"] is False
    assert mc.get(entry["url"] + ".metadata").status_code == 404
    assert "no core metadata from mirrored" in caplog.text


def test_an_evicted_metadata_blob_is_no_longer_offered(mirror_app, mc, plain, clock):
    """Eviction of the METADATA blob takes the offer off the page (and the page cache)."""
    clock.now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    _version, entry = plain_entry(mc)
    mc.get(entry["url"]).get_data()
    _version, entry = plain_entry(mc)
    assert entry["core-metadata"] == {"sha256": sha256(plain["metadata"])}

    the_mirror(mirror_app).cache._remove([(sha256(plain["metadata"]), len(plain["metadata"]))])

    _version, entry = plain_entry(mc)
    assert entry["core-metadata"] is False
    assert entry["size"] == len(plain["data"])  # the wheel is still cached
    assert mc.get(entry["url"] + ".metadata").status_code == 404


def test_a_lost_metadata_blob_is_taken_off_the_page_by_verify_repair(mirror_app, mc, plain, clock):
    """verify --repair drops a METADATA blob the store lost (nothing upstream to fetch it from):
    the page, kept by the page cache, no longer offers a sidecar that would be a 404."""
    clock.now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    _version, entry = plain_entry(mc)
    mc.get(entry["url"]).get_data()
    _version, entry = plain_entry(mc)
    assert entry["core-metadata"] == {"sha256": sha256(plain["metadata"])}
    mirror_app.extensions["pyshelf.storage"].delete(sha256(plain["metadata"]))

    extensions, settings = mirror_app.extensions, mirror_app.config["PYSHELF_SETTINGS"]
    verifier = Verifier(settings, extensions["pyshelf.db"], extensions["pyshelf.storage"])
    report = verifier.run(repair=True, progress=False)

    assert [p.repaired for p in report.of("missing")] == ["removed; the next request fetches it"]
    _version, entry = plain_entry(mc)
    assert entry["core-metadata"] is False


def test_a_file_cached_before_metadata_was_read_still_shows_its_size(mirror_app, mc, plain):
    """A file cached by an older pyshelf (held, no mirror_files row): its size from the cache's
    accounting, and no sidecar (nothing was read from it)."""
    _version, entry = plain_entry(mc)
    mc.get(entry["url"]).get_data()
    with mirror_app.extensions["pyshelf.db"].session() as session:
        session.execute(delete(MirrorFile))
        session.commit()

    version, entry = plain_entry(mc)
    assert (version, entry["size"], entry["core-metadata"]) == ("1.4", len(plain["data"]), False)


def test_an_evicted_wheel_no_longer_describes_its_mirrored_project_in_search(
    mirror_app, mc, clock, fake_upstream
):
    """Issue #19 with #15: the cache evicts the only cached file of plain-pkg and its METADATA;
    its README's words are no longer found (the mirror holds nothing that says them), its
    name still is."""
    clock.now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    fake_upstream.html_only = True  # PEP 503: no sidecar, the wheel is the only source
    filename, data = make_wheel("plain-pkg", "1.0", description="Counts quetzalmarmot herds.")
    fake_upstream.add_file("plain-pkg", filename, data)

    search_json = {"Accept": "application/json"}

    def hits(query: str) -> list[str]:
        response = mc.get("/+search", query_string={"q": query}, headers=search_json)
        assert response.status_code == 200, response.status
        return [f"{hit['index']}/{hit['name']}" for hit in response.get_json()["hits"]]

    _version, entry = plain_entry(mc)
    assert hits("quetzalmarmot") == []
    assert mc.get(entry["url"]).get_data() == data
    assert hits("quetzalmarmot") == ["root/pypi/plain-pkg"]

    eviction = the_mirror(mirror_app).cache.evict(max_bytes=0)  # the wheel and its METADATA

    assert eviction.removed_files == 2
    assert hits("quetzalmarmot") == []
    assert hits("plain-pkg") == ["root/pypi/plain-pkg"]
