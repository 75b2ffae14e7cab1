"""The page cache on a live server (gunicorn, two workers): simple pages are rendered once and
shared by every worker, and whatever changes a page (upload, yank, delete, bases, acl_read, a
mirror refresh or expiry) shows on the very next request, whichever worker answers it.

ETag revalidation (RFC 9110 §13.1.2), uploads that show at once, and read access.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.core.config import Settings
from app.data.db import Database
from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth, clean_env
from tests.e2e.helpers import api, raw_upload
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

MIME_JSON = "application/vnd.pypi.simple.v1+json"
ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
REQUESTS_PER_CHECK = 6  # new connections each: gunicorn spreads them over both workers
EXPIRY_WAIT_SECONDS = 15

StartServer = Callable[..., LiveServer]


@pytest.fixture
def server(server_factory: StartServer, fake_upstream: FakeUpstream) -> LiveServer:
    """Two workers, admin/dev over root/pypi, which mirrors the fake upstream."""
    return server_factory(MIRROR_URL=fake_upstream.url)


def page(
    server: LiveServer, index: str, project: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET of a project page as JSON: (status, headers, body)."""
    status, response_headers, body, _ = server.get(
        f"/{index}/+simple/{project}/", headers={"Accept": MIME_JSON, **(headers or {})}
    )
    return status, response_headers, body


def filenames_everywhere(
    server: LiveServer, index: str, project: str, headers: dict[str, str] | None = None
) -> set[str]:
    """The files the page lists, asserting that every one of several requests agrees."""
    seen = []
    for _ in range(REQUESTS_PER_CHECK):
        status, _, body = page(server, index, project, headers)
        assert status == 200, body
        seen.append(frozenset(f["filename"] for f in json.loads(body)["files"]))
    assert len(set(seen)) == 1, seen
    return set(seen[0])


def cached_rows(server: LiveServer, project: str) -> list[tuple[str, int]]:
    """(index path, is_public) of the stored pages of a project, read from its database."""
    url = clean_env(DATA_DIR=str(server.data_dir)).get("DATABASE_URL", "")
    database = Database(Settings(data_dir=server.data_dir, database_url=url).database_url)
    try:
        with database.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT index_path, is_public FROM cached_pages WHERE normalized_name = :name"
                ),
                {"name": project},
            ).all()
    finally:
        database.engine.dispose()
    return [(path, int(is_public)) for path, is_public in rows]


def upload(server: LiveServer, index: str, name: str, version: str, **auth: Any) -> str:
    """Upload a wheel of NAME VERSION through the server; its filename."""
    filename, data = make_wheel(name, version)
    status, _, body, _ = raw_upload(server, index, filename, data, **auth)
    assert status == 200, body
    return filename


def test_an_upload_shows_on_the_next_request_of_every_worker(server: LiveServer) -> None:
    """The stored page of admin/dev is forgotten in the same transaction as the upload."""
    first = upload(server, "admin/dev", "cachedpkg", "1.0")
    assert filenames_everywhere(server, "admin/dev", "cachedpkg") == {first}
    assert ("admin/dev", 1) in cached_rows(server, "cachedpkg")

    second = upload(server, "admin/dev", "cachedpkg", "2.0")

    assert filenames_everywhere(server, "admin/dev", "cachedpkg") == {first, second}


def test_a_yank_shows_on_the_next_request(server: LiveServer) -> None:
    """PEP 592: a yank through the JSON API marks the file on the next page."""
    upload(server, "admin/dev", "yankpkg", "1.0")
    filenames_everywhere(server, "admin/dev", "yankpkg")

    status, _, reason = api(
        server, "PATCH", "/admin/dev/yankpkg/1.0", {"yanked": True, "reason": "broken"}
    )
    assert status == 200, reason

    for _ in range(REQUESTS_PER_CHECK):
        _, _, body = page(server, "admin/dev", "yankpkg")
        assert [f["yanked"] for f in json.loads(body)["files"]] == ["broken"]


def test_a_delete_shows_on_the_next_request(server: LiveServer) -> None:
    """Deleting a version (volatile index) removes it from the very next page."""
    status, _, reason = api(server, "PATCH", "/admin/dev", {"volatile": True})
    assert status == 200, reason
    old = upload(server, "admin/dev", "delpkg", "1.0")
    new = upload(server, "admin/dev", "delpkg", "2.0")
    assert filenames_everywhere(server, "admin/dev", "delpkg") == {old, new}

    status, _, _, reason = server.get("/admin/dev/delpkg/1.0", headers=ADMIN, method="DELETE")
    assert status == 200, reason

    assert filenames_everywhere(server, "admin/dev", "delpkg") == {new}


def test_bases_changes_and_uploads_to_a_base_reach_the_stage_above(server: LiveServer) -> None:
    """A stage's page merges its bases: changing its bases, or uploading to a base, both show."""
    for name in ("low", "top"):
        status, _, reason = api(server, "PUT", f"/admin/{name}", {"bases": []})
        assert status == 201, reason
    own = upload(server, "admin/top", "mixed", "1.0")
    inherited = upload(server, "admin/low", "mixed", "2.0")
    assert filenames_everywhere(server, "admin/top", "mixed") == {own}

    status, _, reason = api(server, "PATCH", "/admin/top", {"bases": ["admin/low"]})
    assert status == 200, reason
    assert filenames_everywhere(server, "admin/top", "mixed") == {own, inherited}

    later = upload(server, "admin/low", "mixed", "3.0")
    assert filenames_everywhere(server, "admin/top", "mixed") == {own, inherited, later}


def test_restricting_read_access_stops_serving_the_stored_public_page(
    server: LiveServer,
) -> None:
    """Once acl_read names only the owner, strangers get 401/403, never the stored page."""
    status, _, reason = api(server, "PUT", "/admin/shut", {"bases": []})
    assert status == 201, reason
    upload(server, "admin/shut", "hidden", "1.0")
    assert filenames_everywhere(server, "admin/shut", "hidden")
    assert cached_rows(server, "hidden") == [("admin/shut", 1)]
    status, _, reason = api(server, "PUT", "/bob", {"password": "bob-password-1"})
    assert status == 201, reason

    status, _, reason = api(server, "PATCH", "/admin/shut", {"acl_read": ["admin"]})
    assert status == 200, reason

    assert filenames_everywhere(server, "admin/shut", "hidden", ADMIN)  # stored again, private
    assert cached_rows(server, "hidden") == [("admin/shut", 0)]
    for _ in range(REQUESTS_PER_CHECK):
        assert page(server, "admin/shut", "hidden")[0] == 401
        bob = {"Authorization": basic_auth("bob", "bob-password-1")}
        status, headers, _ = page(server, "admin/shut", "hidden", bob)
        assert status == 403
        assert "ETag" not in headers


def test_a_stage_over_a_private_base_shows_each_reader_only_what_they_may_read(
    server: LiveServer,
) -> None:
    """The stored page holds a private base's files: only those who may read every index get
    it; a stranger's page is built without them (and is not stored)."""
    status, _, reason = api(server, "PUT", "/admin/vault", {"bases": [], "acl_read": ["admin"]})
    assert status == 201, reason
    status, _, reason = api(server, "PUT", "/admin/front", {"bases": ["admin/vault"]})
    assert status == 201, reason
    public = upload(server, "admin/front", "layered", "1.0")
    secret = upload(server, "admin/vault", "layered", "2.0")

    assert filenames_everywhere(server, "admin/front", "layered", ADMIN) == {public, secret}
    assert cached_rows(server, "layered") == [("admin/front", 0)]

    assert filenames_everywhere(server, "admin/front", "layered") == {public}


def test_a_304_carries_the_etag_of_the_body_and_a_change_gives_a_new_one(
    server: LiveServer,
) -> None:
    """If-None-Match with the stored page's ETag is a 304 from any worker, with that ETag;
    after an upload the same validator gets the new page and a new ETag."""
    upload(server, "admin/dev", "etagpkg", "1.0")
    status, headers, body = page(server, "admin/dev", "etagpkg")
    assert status == 200
    etag = headers["ETag"]
    for _ in range(REQUESTS_PER_CHECK):
        status, again, revalidated = page(server, "admin/dev", "etagpkg", {"If-None-Match": etag})
        assert (status, again["ETag"], revalidated) == (304, etag, b"")
    assert page(server, "admin/dev", "etagpkg")[2] == body

    upload(server, "admin/dev", "etagpkg", "2.0")

    status, headers, _ = page(server, "admin/dev", "etagpkg", {"If-None-Match": etag})
    assert status == 200
    assert headers["ETag"] != etag


def test_a_large_page_has_a_gzipped_twin_with_its_own_etag(
    server: LiveServer, fake_upstream: FakeUpstream
) -> None:
    """Clients that accept gzip (pip does) get the large page compressed, byte for byte the
    same page once decoded, under its own strong ETag that revalidates to a 304."""
    for number in range(80):
        filename, data = make_wheel("bigpkg", f"1.0.{number}")
        fake_upstream.add_file("bigpkg", filename, data)
    page(server, "root/pypi", "bigpkg")  # fetched from the upstream: stored from the next one
    status, plain_headers, plain = page(server, "root/pypi", "bigpkg")
    assert status == 200
    assert "Content-Encoding" not in plain_headers

    gz = {"Accept-Encoding": "gzip"}
    for _ in range(REQUESTS_PER_CHECK):
        status, headers, body = page(server, "root/pypi", "bigpkg", gz)
        assert (status, headers["Content-Encoding"]) == (200, "gzip")
        assert gzip.decompress(body) == plain
        assert headers["ETag"] == plain_headers["ETag"][:-1] + '-gz"'
        assert "Accept-Encoding" in headers["Vary"]
    status, headers, _ = page(
        server, "root/pypi", "bigpkg", {**gz, "If-None-Match": headers["ETag"]}
    )
    assert status == 304


def test_a_mirror_refresh_shows_the_upstreams_new_files(
    server: LiveServer, fake_upstream: FakeUpstream
) -> None:
    """POST .../refresh makes the next request of any worker fetch and show the new files."""
    old, data = make_wheel("upstreampkg", "1.0")
    fake_upstream.add_file("upstreampkg", old, data)
    assert filenames_everywhere(server, "admin/dev", "upstreampkg") == {old}
    new, data = make_wheel("upstreampkg", "2.0")
    fake_upstream.add_file("upstreampkg", new, data)
    assert filenames_everywhere(server, "admin/dev", "upstreampkg") == {old}  # still fresh

    status, _, _, reason = server.get(
        "/admin/dev/+simple/upstreampkg/refresh", headers=ADMIN, method="POST"
    )
    assert status in (200, 302), reason

    assert filenames_everywhere(server, "admin/dev", "upstreampkg") == {old, new}


def test_a_stored_mirror_page_expires_with_the_mirror_page_it_was_made_from(
    server: LiveServer, fake_upstream: FakeUpstream
) -> None:
    """MIRROR_CACHE_EXPIRY (here root/pypi's mirror_cache_expiry of 1 s) bounds the stored
    page too: once the mirror page is due, the next request revalidates with the upstream."""
    status, _, reason = api(server, "PATCH", "/root/pypi", {"mirror_cache_expiry": 1})
    assert status == 200, reason
    old, data = make_wheel("expiring", "1.0")
    fake_upstream.add_file("expiring", old, data)
    assert filenames_everywhere(server, "admin/dev", "expiring") == {old}
    new, data = make_wheel("expiring", "2.0")
    fake_upstream.add_file("expiring", new, data)

    # One request at a time while waiting: the page may expire between the requests of one
    # agreement check (1 s goes by fast on a loaded machine). Once the new file shows, every
    # request must agree on it.
    deadline = time.monotonic() + EXPIRY_WAIT_SECONDS
    shown: set[str] = set()
    while time.monotonic() < deadline and shown != {old, new}:
        time.sleep(0.5)
        status, _, body = page(server, "admin/dev", "expiring")
        assert status == 200, body
        shown = {f["filename"] for f in json.loads(body)["files"]}
    assert shown == {old, new}
    assert filenames_everywhere(server, "admin/dev", "expiring") == {old, new}


def test_pages_are_forgotten_at_startup(server: LiveServer, tmp_path: Path) -> None:
    """A restart may change MIRROR_CACHE_EXPIRY: stored pages are rebuilt after it."""
    upload(server, "admin/dev", "restartpkg", "1.0")
    filenames_everywhere(server, "admin/dev", "restartpkg")
    assert cached_rows(server, "restartpkg")

    server.stop()
    server.start()

    assert cached_rows(server, "restartpkg") == []
