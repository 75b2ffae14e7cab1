"""The caching mirror on a live server (gunicorn, two workers) in front of a fake upstream.

Stale-if-error (RFC 5861), revalidation (RFC 9110 §13.1.2), hashes and sidecars (PEP 503, 658,
691), single-flight downloads and the dependency-confusion rule.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from app.services import throttle
from tests import pgserver
from tests.blobs import StoredBlob, server_blob
from tests.builders import make_sdist, make_wheel
from tests.conftest import (
    ADMIN_PASSWORD,
    ROOT,
    LiveServer,
    basic_auth,
    clean_env,
    run_pip,
)
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

MIME_JSON = "application/vnd.pypi.simple.v1+json"
JSON = {"Accept": MIME_JSON}
ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
STALE_HEADER = "X-Pyshelf-Stale"
# Short upstream timeouts keep the failure tests fast; every bound below is a hang guard.
FAST_UPSTREAM = {
    "UPSTREAM_CONNECT_TIMEOUT": "2",
    "UPSTREAM_READ_TIMEOUT": "3",
    "UPSTREAM_RETRIES": "1",
}
HANG_GUARD_SECONDS = 20
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

StartServer = Callable[..., LiveServer]


def sha256(data: bytes) -> str:
    """Lowercase hex sha256."""
    return hashlib.sha256(data).hexdigest()


def wheel_metadata(data: bytes) -> bytes:
    """The METADATA member of a wheel: what its PEP 658 sidecar must be (pip >= 26.2 checks)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


def add_wheel(
    upstream: FakeUpstream,
    name: str,
    version: str = "1.0.0",
    *,
    with_metadata: bool = True,
    payload_bytes: int = 0,
    **options: Any,
) -> tuple[str, bytes]:
    """Build a wheel (with `payload_bytes` of incompressible data) and publish it upstream."""
    files = {f"{name.replace('-', '_')}/payload.bin": os.urandom(payload_bytes)}
    filename, data = make_wheel(name, version, files=files if payload_bytes else None, **options)
    metadata = wheel_metadata(data) if with_metadata else None
    requires_python = options.get("requires_python")
    upstream.add_file(name, filename, data, metadata=metadata, requires_python=requires_python)
    return filename, data


def start_mirror(server_factory: StartServer, upstream: FakeUpstream, **env: str) -> LiveServer:
    """A server whose root/pypi mirrors `upstream`, with short upstream timeouts."""
    return server_factory(**{"MIRROR_URL": upstream.url, **FAST_UPSTREAM, **env})


def page(server: LiveServer, index: str, project: str) -> tuple[int, dict[str, str], Any]:
    """A project page as PEP 691 JSON: (status, headers, document or None)."""
    status, headers, body, _reason = server.get(f"/{index}/+simple/{project}/", headers=JSON)
    return status, headers, json.loads(body) if status == 200 else None


def file_entry(document: dict[str, Any], filename: str) -> dict[str, Any]:
    """One file of a PEP 691 page, by filename."""
    return next(f for f in document["files"] if f["filename"] == filename)


def fetch(
    server: LiveServer, path: str, timeout: float = HANG_GUARD_SECONDS
) -> tuple[int, bytes, str | None, dict[str, str]]:
    """GET, reading to the end: (status, body so far, the transfer error or None, headers)."""
    request = urllib.request.Request(server.url + path)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            try:
                body, error = response.read(), None
            except http.client.IncompleteRead as exc:
                body, error = exc.partial, repr(exc)
            except OSError as exc:  # a reset, or the server closing mid-body
                body, error = b"", repr(exc)
            return response.status, body, error, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), None, dict(exc.headers)
    except (http.client.HTTPException, OSError) as exc:  # closed before a status line
        return 0, b"", repr(exc), {}


def mirror_file_path(server: LiveServer, project: str, filename: str) -> str:
    """The local `+f` path of a mirrored file, as root/pypi's page links it."""
    status, _headers, document = page(server, "root/pypi", project)
    assert status == 200
    return file_entry(document, filename)["url"]


def blob_path(server: LiveServer, data: bytes) -> StoredBlob:
    """The stored blob of `data`, read and removed like a file (local store or S3)."""
    return server_blob(server, sha256(data))


def stats(server: LiveServer, index: str = "pypi") -> tuple[int, int, int]:
    """(hits, misses, bytes_fetched) of a mirror index, read from the database."""
    url = pgserver.database_env(server.data_dir).get("DATABASE_URL")
    engine = create_engine(url or f"sqlite:///{server.data_dir / 'pyshelf.sqlite3'}")
    try:
        with engine.connect() as db:
            row = db.execute(
                text(
                    "SELECT s.hits, s.misses, s.bytes_fetched FROM mirror_stats s"
                    " JOIN indexes i ON i.id = s.index_id WHERE i.name = :index"
                ),
                {"index": index},
            ).first()
    finally:
        engine.dispose()
    return tuple(row) if row else (0, 0, 0)


def api(server: LiveServer, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
    """A JSON API call as admin: (status, decoded body or None, raw body)."""
    headers = {**ADMIN, "Accept": "application/json", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    status, _headers, raw, _reason = server.get(path, headers=headers, method=method, data=data)
    try:
        return status, json.loads(raw), raw
    except ValueError:
        return status, None, raw


def cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`./entrypoint.sh ARGS` against the server's data directory."""
    return subprocess.run(
        [str(ROOT / "entrypoint.sh"), *args],
        cwd=ROOT,
        env=clean_env(DATA_DIR=str(server.data_dir), PYSHELF_PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def upload(server: LiveServer, index: str, filename: str, data: bytes) -> None:
    """Upload a distribution the way twine does (legacy API, multipart), as admin."""
    name, version = filename.split("-")[:2]
    boundary = "pyshelf-mirror-test-boundary"
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "metadata_version": "2.1",
        "name": name,
        "version": version,
        "filetype": "bdist_wheel",
        "pyversion": "py3",
        "sha256_digest": sha256(data),
    }
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{filename}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    headers = {**ADMIN, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _headers, body, reason = server.get(
        f"/{index}/", headers=headers, method="POST", data=b"".join(parts)
    )
    assert status == 200, (status, reason, body)


def pip_install(server: LiveServer, index: str, target: Path, *requirements: str) -> str:
    """`pip install --target` from one pyshelf index only; returns pip's output."""
    result = run_pip(
        "install", "--target", str(target), "--index-url", f"{server.url}/{index}/+simple/",
        *requirements,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def wait_for(condition: Callable[[], bool], seconds: float = HANG_GUARD_SECONDS) -> bool:
    """Poll `condition` every 50 ms for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- installs: cold, then warm ------------------------------------------------------------------


@pytest.mark.parametrize("index", ["root/pypi", "admin/dev"])
def test_pip_installs_cold_then_warm_with_no_upstream_request_while_fresh(
    server_factory, fake_upstream, tmp_path, index
):
    """The first install fetches each page and file once; the second nothing."""
    app_wheel, _ = add_wheel(fake_upstream, "mirror-app", requires_dist=["mirror-lib>=1"])
    lib_wheel, lib_data = add_wheel(fake_upstream, "mirror-lib", "1.2.0")
    add_wheel(fake_upstream, "never-asked", "1.0.0")  # upstream has more than we ask for
    server = start_mirror(server_factory, fake_upstream)

    pip_install(server, index, tmp_path / "cold", "mirror-app")
    assert (tmp_path / "cold" / "mirror_app" / "__init__.py").is_file()
    assert (tmp_path / "cold" / "mirror_lib" / "__init__.py").is_file()
    assert fake_upstream.count("/simple/mirror-app/") == 1
    assert fake_upstream.count("/simple/mirror-lib/") == 1
    lib_file = f"/files/{sha256(lib_data)[:12]}/{lib_wheel}"
    assert fake_upstream.requests[lib_file] == 1  # and at most once its .metadata sidecar
    assert any(path.endswith(app_wheel) for path in fake_upstream.requests)
    assert blob_path(server, lib_data).read_bytes() == lib_data

    fake_upstream.reset_counts()
    pip_install(server, index, tmp_path / "warm", "mirror-app")
    assert (tmp_path / "warm" / "mirror_lib" / "__init__.py").is_file()
    assert fake_upstream.count("/files/") == 0
    assert fake_upstream.count("/simple/") == 0
    assert fake_upstream.count("/") == 0

    # The mirror's own project list shows what it cached, never the upstream's list (PEP 503).
    status, _headers, body, _reason = server.get("/root/pypi/+simple/", headers=JSON)
    assert status == 200
    names = {p["name"] for p in json.loads(body)["projects"]}
    assert {"mirror-app", "mirror-lib"} <= names
    assert "never-asked" not in names
    assert fake_upstream.requests["/simple/"] == 0


def test_mirrored_pages_rewrite_links_and_pass_upstream_data_through(server_factory, fake_upstream):
    """PEP 503, 691: local +f links, upstream sha256/requires-python/yanked/size kept."""
    wheel, data = add_wheel(fake_upstream, "passthru", requires_python=">=3.8")
    sdist, sdist_data = make_sdist("passthru", "0.9.0")
    fake_upstream.add_file(
        "passthru", sdist, sdist_data, requires_python=">=3.7", yanked="broken <build>"
    )
    server = start_mirror(server_factory, fake_upstream)

    status, _headers, document = page(server, "root/pypi", "passthru")
    assert status == 200
    whl = file_entry(document, wheel)
    assert whl["url"] == f"/root/pypi/+f/{sha256(data)}/{wheel}"
    assert whl["hashes"] == {"sha256": sha256(data)}
    assert whl["requires-python"] == ">=3.8"
    assert whl["size"] == len(data)
    assert whl["yanked"] is False
    tarball = file_entry(document, sdist)
    assert tarball["yanked"] == "broken <build>"
    assert tarball["requires-python"] == ">=3.7"
    assert sorted(document["versions"]) == ["0.9.0", "1.0.0"]

    # HEAD of an uncached file must not leave the download half-started (lock, part file).
    status, _headers, body, _reason = server.get(whl["url"], method="HEAD")
    assert (status, body) == (200, b"")
    assert fetch(server, whl["url"])[:3] == (200, data, None)
    assert list((server.data_dir / "tmp" / "mirror").glob("*")) == []

    status, _headers, html, _reason = server.get("/root/pypi/+simple/passthru/")
    assert status == 200
    assert f'href="/root/pypi/+f/{sha256(data)}/{wheel}#sha256={sha256(data)}"'.encode() in html
    assert b'data-yanked="broken &lt;build&gt;"' in html
    assert fake_upstream.base_url.encode() not in html  # every byte passes through the mirror


# --- single flight ------------------------------------------------------------------------------


def test_eight_concurrent_cold_requests_cause_one_upstream_download(server_factory, fake_upstream):
    """One upstream download for concurrent requests across workers; all get right bytes."""
    wheel, data = add_wheel(fake_upstream, "crowd", payload_bytes=600_000)
    server = start_mirror(server_factory, fake_upstream)
    path = f"/root/pypi/+f/{sha256(data)}/{wheel}"  # the page is cold too: the URL is pyshelf's
    fake_upstream.throttle_bytes_per_second = 600_000  # about a second: followers must follow

    barrier = threading.Barrier(8)
    results: list[tuple[int, bytes, str | None, dict[str, str]]] = []
    lock = threading.Lock()

    def client() -> None:
        barrier.wait(timeout=HANG_GUARD_SECONDS)
        result = fetch(server, path)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_GUARD_SECONDS * 2)
    assert not any(thread.is_alive() for thread in threads)

    assert [(status, error) for status, _body, error, _h in results] == [(200, None)] * 8
    assert all(sha256(body) == sha256(data) for _status, body, _error, _h in results)
    assert fake_upstream.count("/files/") == 1
    assert fake_upstream.count("/simple/crowd/") == 1  # one page fetch per project, too
    assert blob_path(server, data).read_bytes() == data

    status, body, error, headers = fetch(server, path)  # now a plain cache hit (RFC 8246)
    assert (status, error, body == data) == (200, None, True)
    assert headers["ETag"] == f'"{sha256(data)}"'
    assert "immutable" in headers["Cache-Control"]
    assert fake_upstream.count("/files/") == 1
    assert list((server.data_dir / "tmp" / "mirror").glob("*.part")) == []


# --- integrity: hash mismatch and truncation ----------------------------------------------------


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_bad_upstream_bytes_are_never_served_complete_nor_cached(
    server_factory, fake_upstream, tmp_path, fault
):
    """A wrong sha256 or a short transfer cuts the client off and caches nothing."""
    wheel, data = add_wheel(fake_upstream, f"bad-{fault}", payload_bytes=200_000)
    server = start_mirror(server_factory, fake_upstream)
    path = mirror_file_path(server, f"bad-{fault}", wheel)
    getattr(fake_upstream, fault).add(wheel)

    for _attempt in range(2):  # the second request tries upstream again, and fails again
        status, body, error, _headers = fetch(server, path)
        assert status != 200 or error is not None, "a bad file must not arrive complete"
        assert len(body) < len(data)
        assert body != data
    result = run_pip(
        "download", "--no-deps", "--retries", "0", "-d", str(tmp_path / "d"),
        "-i", f"{server.url}/root/pypi/+simple/", f"bad-{fault}",
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert not list((tmp_path / "d").glob("*.whl"))
    assert not blob_path(server, data).exists()
    assert list((server.data_dir / "tmp" / "mirror").glob("*.part")) == []
    assert "not cached" in server.log()

    getattr(fake_upstream, fault).discard(wheel)
    fake_upstream.reset_counts()
    status, body, error, _headers = fetch(server, path)
    assert (status, error) == (200, None)
    assert body == data
    assert blob_path(server, data).read_bytes() == data
    status, body, error, _headers = fetch(server, path)
    assert (status, error, body == data) == (200, None, True)
    assert fake_upstream.count("/files/") == 1


# --- upstream failures --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["503", "reset", "stopped", "slow"])
def test_upstream_failure_serves_stale_pages_and_cached_files(server_factory, fake_upstream, fault):
    """Stale-if-error (RFC 5861), X-Pyshelf-Stale; an unknown project gets 502/504, never 500."""
    wheel, data = add_wheel(fake_upstream, "steady")
    timeout = {"UPSTREAM_READ_TIMEOUT": "1"} if fault == "slow" else {}  # 4 timeouts below
    server = start_mirror(server_factory, fake_upstream, MIRROR_CACHE_EXPIRY="0", **timeout)
    path = mirror_file_path(server, "steady", wheel)
    assert fetch(server, path)[:3] == (200, data, None)

    if fault == "stopped":
        fake_upstream.stop()
    elif fault == "slow":
        fake_upstream.delay_seconds = 10  # beyond UPSTREAM_READ_TIMEOUT
    else:
        fake_upstream.fail(fault)

    started = time.monotonic()
    status, headers, document = page(server, "root/pypi", "steady")
    assert status == 200
    assert headers[STALE_HEADER] == "root/pypi"
    assert file_entry(document, wheel)["hashes"]["sha256"] == sha256(data)

    # A cached file is found by the sha256 in its URL: served without asking the
    # upstream for the page, so neither stale nor slowed down by the failing upstream.
    status, body, error, headers = fetch(server, path)
    assert (status, error, body == data) == (200, None, True)

    status, headers, document = page(server, "admin/dev", "steady")  # through a stage too
    assert status == 200
    assert headers[STALE_HEADER] == "root/pypi"

    status, headers, body, reason = server.get("/root/pypi/+simple/never-seen/")
    assert status in (502, 504), (status, reason)
    assert "Upstream" in reason
    assert "127.0.0.1" in reason  # it names the upstream
    assert headers.get("Retry-After")
    assert time.monotonic() - started < 3 * HANG_GUARD_SECONDS  # hang guard only
    assert "serving stale root/pypi/steady" in server.log()
    assert not re.search(r'HTTP/1\.[01]" 5[0-9][0-9] .*\+simple/steady/', server.log())
    assert 'HTTP/1.1" 500 ' not in server.log()


def test_upstream_404_is_cached_briefly_and_a_new_project_is_found_afterwards(
    server_factory, fake_upstream
):
    """An upstream 404 is a 404, remembered for MIRROR_NOT_FOUND_EXPIRY seconds."""
    server = start_mirror(server_factory, fake_upstream, MIRROR_NOT_FOUND_EXPIRY="2")
    for _ in range(3):
        status, headers, _body, _reason = server.get("/root/pypi/+simple/late-comer/")
        assert status == 404
        assert headers["Cache-Control"] == "no-store"
    assert fake_upstream.count("/simple/late-comer/") == 1

    wheel, _ = add_wheel(fake_upstream, "late-comer")
    assert wait_for(lambda: page(server, "root/pypi", "late-comer")[0] == 200, seconds=10)
    assert file_entry(page(server, "root/pypi", "late-comer")[2], wheel)
    assert fake_upstream.count("/simple/late-comer/") == 2


def test_upstream_5xx_for_a_new_project_is_not_cached_as_missing(server_factory, fake_upstream):
    """RFC 5861 §4: a failing upstream is not a 404, and the next request asks again."""
    wheel, _ = add_wheel(fake_upstream, "flaky")
    server = start_mirror(server_factory, fake_upstream)
    fake_upstream.fail("503")
    status, _headers, _body, reason = server.get("/root/pypi/+simple/flaky/")
    assert status == 502, reason
    fake_upstream.fail(None)
    status, _headers, document = page(server, "root/pypi", "flaky")
    assert status == 200
    assert file_entry(document, wheel)


# --- revalidation and refresh -------------------------------------------------------------------


def test_expired_page_is_revalidated_with_its_etag_and_a_304_keeps_it(
    server_factory, fake_upstream
):
    """If-None-Match on revalidation (RFC 9110 §13.1.2); an unchanged page costs a 304."""
    wheel, _ = add_wheel(fake_upstream, "revalidated")
    server = start_mirror(server_factory, fake_upstream)
    assert page(server, "root/pypi", "revalidated")[0] == 200
    assert page(server, "root/pypi", "revalidated")[0] == 200
    assert fake_upstream.count("/simple/revalidated/") == 1  # fresh: not asked again

    status, result, _raw = api(server, "PATCH", "/root/pypi", {"mirror_cache_expiry": 0})
    assert status == 200, result
    assert result["result"]["mirror_cache_expiry"] == 0
    fake_upstream.reset_counts()
    status, headers, document = page(server, "root/pypi", "revalidated")
    assert status == 200
    assert STALE_HEADER not in headers
    assert file_entry(document, wheel)
    [sent] = fake_upstream.headers_for("/simple/revalidated/")
    # The fake answers 304 exactly when the tag matches its current one for these headers.
    probe = urllib.request.Request(
        fake_upstream.url + "revalidated/",
        headers={"Accept": sent["accept"], "Accept-Encoding": sent.get("accept-encoding", "")},
    )
    with _OPENER.open(probe, timeout=10) as response:
        current_etag = response.headers["ETag"]
    assert sent["if-none-match"] == current_etag
    assert sent.get("if-modified-since")

    # A changed upstream page replaces the cached one on the next revalidation.
    new_wheel, _ = add_wheel(fake_upstream, "revalidated", "2.0.0")
    status, _headers, document = page(server, "root/pypi", "revalidated")
    assert {f["filename"] for f in document["files"]} == {wheel, new_wheel}


def test_refresh_by_post_and_by_entrypoint_refetches_a_fresh_page(server_factory, fake_upstream):
    """Issue item 7: refresh marks the cached page stale; the next request asks upstream."""
    add_wheel(fake_upstream, "refreshed", "1.0.0")
    server = start_mirror(server_factory, fake_upstream)
    assert page(server, "root/pypi", "refreshed")[0] == 200
    second, _ = add_wheel(fake_upstream, "refreshed", "2.0.0")
    _status, _headers, document = page(server, "root/pypi", "refreshed")
    assert second not in {f["filename"] for f in document["files"]}  # fresh: cached answer
    assert fake_upstream.count("/simple/refreshed/") == 1

    status, headers, login_page, _reason = server.get("/+login")
    cookie = headers["Set-Cookie"].split(";")[0]
    token = re.search(rb'name="csrf_token" value="([^"]+)"', login_page).group(1).decode()
    status, headers, body, _reason = server.get(
        "/root/pypi/refreshed/+refresh",
        method="POST",
        headers={
            "Accept": "text/html",
            "Cookie": cookie,
            "Content-Type": "application/x-www-form-urlencoded",
        },
        data=f"csrf_token={token}".encode(),
    )  # the web button: an anonymous browser goes to the login page, and back afterwards
    assert (status, headers["Location"]) == (303, "/+login?next=/root/pypi/refreshed/")
    _status, _headers, document = page(server, "root/pypi", "refreshed")
    assert second not in {f["filename"] for f in document["files"]}  # not refreshed
    assert fake_upstream.count("/simple/refreshed/") == 1

    status, headers, body, _reason = server.get(
        "/root/pypi/+simple/refreshed/refresh", method="POST", headers={"Accept": MIME_JSON}
    )  # anonymous, as devpi-client's `devpi refresh`: allowed, counted per address
    assert status == 302, body
    assert headers["Location"].endswith("/root/pypi/+simple/refreshed/")
    _status, _headers, document = page(server, "root/pypi", "refreshed")
    assert second in {f["filename"] for f in document["files"]}
    assert fake_upstream.count("/simple/refreshed/") == 2

    third, _ = add_wheel(fake_upstream, "refreshed", "3.0.0")
    result = cli(server, "refresh", "admin/dev", "Refreshed")  # a stage refreshes its mirrors
    assert result.returncode == 0, result.stderr
    assert "1 cached page(s) of refreshed" in result.stdout
    _status, _headers, document = page(server, "admin/dev", "refreshed")
    assert third in {f["filename"] for f in document["files"]}
    assert fake_upstream.count("/simple/refreshed/") == 3

    status, _headers, body, _reason = server.get(
        "/admin/dev/+simple/refreshed/refresh",
        method="POST",
        headers={"Accept": "application/json", **ADMIN},
    )
    assert status == 200
    assert json.loads(body) == {"refreshed": ["root/pypi"]}


def refresh_from(server: LiveServer, address: str, headers: dict[str, str] | None = None) -> tuple:
    """POST .../+simple/NAME/refresh from `address` (a loopback address the socket binds to):
    (status, Retry-After)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=30, source_address=(address, 0)
    )
    try:
        connection.request("POST", "/root/pypi/+simple/anything/refresh", headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        connection.close()


def test_anonymous_refreshes_are_limited_per_address(server_factory):
    """Issue #15 item 11: an address without credentials gets MAX_ANONYMOUS_REFRESHES, then
    429 with Retry-After, so strangers cannot make the server hammer the upstream; other
    addresses and logged-in users go on refreshing."""
    server = server_factory()
    for _ in range(throttle.MAX_ANONYMOUS_REFRESHES):
        assert refresh_from(server, "127.0.0.6")[0] == 302

    assert refresh_from(server, "127.0.0.6") == (429, str(throttle.FIRST_LOCK_SECONDS))
    assert refresh_from(server, "127.0.0.7")[0] == 302
    assert refresh_from(server, "127.0.0.6", ADMIN)[0] == 302


# --- crashes ------------------------------------------------------------------------------------


def test_worker_killed_mid_download_leaves_nothing_that_is_served_later(
    server_factory, fake_upstream
):
    """After SIGKILL mid-download no partial file is ever served."""
    wheel, data = add_wheel(fake_upstream, "killed", payload_bytes=1_500_000)
    server = start_mirror(server_factory, fake_upstream)
    path = mirror_file_path(server, "killed", wheel)
    fake_upstream.throttle_bytes_per_second = 400_000  # about four seconds

    received: list[int] = []
    outcome: list[str] = []

    def slow_client() -> None:
        try:
            with _OPENER.open(server.url + path, timeout=HANG_GUARD_SECONDS) as response:
                while chunk := response.read(65536):
                    received.append(len(chunk))
            outcome.append("eof")
        except (http.client.HTTPException, OSError) as exc:
            outcome.append(repr(exc))

    part_dir = server.data_dir / "tmp" / "mirror"
    old_workers = set(server.worker_pids())
    thread = threading.Thread(target=slow_client)
    thread.start()
    assert wait_for(lambda: any(p.stat().st_size > 200_000 for p in part_dir.glob("*.part")))
    for pid in old_workers:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=HANG_GUARD_SECONDS)
    assert not thread.is_alive()
    assert sum(received) < len(data)
    assert not blob_path(server, data).exists()

    assert wait_for(lambda: len(set(server.worker_pids()) - old_workers) == 2)
    assert wait_for(lambda: server.get("/+status")[0] == 200)
    fake_upstream.throttle_bytes_per_second = None
    status, body, error, headers = fetch(server, path)
    assert (status, error) == (200, None)
    assert sha256(body) == sha256(data)
    assert headers["Content-Length"] == str(len(data))
    assert blob_path(server, data).read_bytes() == data
    assert list(part_dir.glob("*.part")) == []
    assert fake_upstream.count("/files/") == 2


# --- the upstream's project list, private names, credentials -------------------------------------


def test_private_names_are_never_asked_upstream_unless_whitelisted(
    server_factory, fake_upstream, tmp_path
):
    """A stage project hides the mirror's of that name; upstream is not asked."""
    add_wheel(fake_upstream, "acme-secret", "9.9.9")  # the attacker's upload to "PyPI"
    server = start_mirror(server_factory, fake_upstream)
    private, private_data = make_wheel("acme-secret", "0.1.0")
    upload(server, "admin/dev", private, private_data)

    status, _headers, document = page(server, "admin/dev", "acme-secret")
    assert status == 200
    assert document["versions"] == ["0.1.0"]
    assert [f["filename"] for f in document["files"]] == [private]
    pip_install(server, "admin/dev", tmp_path / "t", "acme-secret")
    assert list((tmp_path / "t").glob("acme_secret-0.1.0.dist-info"))
    assert fake_upstream.count("/simple/acme-secret/") == 0
    assert fake_upstream.count("/simple/") == 0

    status, result, _raw = api(server, "PATCH", "/admin/dev", {"mirror_whitelist": ["acme-secret"]})
    assert status == 200, result
    status, _headers, document = page(server, "admin/dev", "acme-secret")
    assert sorted(document["versions"]) == ["0.1.0", "9.9.9"]
    assert fake_upstream.count("/simple/acme-secret/") == 1
    assert fake_upstream.requests["/simple/"] == 0


def test_credentials_in_mirror_url_are_sent_and_never_shown(server_factory, fake_upstream):
    """Basic auth from the URL as a header; masked in pages, API and logs."""
    password = "s3cret-Upstream-pw"
    fake_upstream.basic_auth = ("mirror-user", password)
    wheel, data = add_wheel(fake_upstream, "guarded")
    url = f"http://mirror-user:{password}@127.0.0.1:{fake_upstream.base_url.rsplit(':', 1)[1]}"
    server = start_mirror(server_factory, fake_upstream, MIRROR_URL=f"{url}/simple/")

    status, _headers, document = page(server, "root/pypi", "guarded")
    assert status == 200
    entry = file_entry(document, wheel)
    status, body, error, _headers = fetch(server, entry["url"])
    assert (status, error, body == data) == (200, None, True)
    status, body, error, _headers = fetch(server, entry["url"] + ".metadata")
    assert (status, body) == (200, wheel_metadata(data))
    expected = basic_auth("mirror-user", password)
    assert all(h.get("authorization") == expected for h in fake_upstream.headers_for("/"))

    gpu = {"type": "mirror", "mirror_url": f"{url}/simple/"}
    status, result, raw = api(server, "PUT", "/root/gpu", gpu)
    assert status == 201, result
    assert result["result"]["mirror_url"] == f"http://***:***@{url.rsplit('@', 1)[1]}/simple/"
    created = cli(server, "index", "create", "root/cli", "type=mirror", f"mirror_url={url}/simple/")
    assert created.returncode == 0, created.stderr
    assert "***:***@127.0.0.1" in created.stdout
    fake_upstream.fail("503")
    status, _headers, body, reason = server.get("/root/pypi/+simple/unseen/")
    assert status == 502
    shown = [
        raw,
        reason.encode(),
        body,
        server.get("/root/pypi")[2],
        server.get("/root")[2],
        server.get("/root/pypi/+simple/")[2],
        server.get("/root/pypi/+simple/guarded/")[2],
        json.dumps(document).encode(),
    ]
    for output in [*shown, created.stdout.encode(), created.stderr.encode()]:
        assert password.encode() not in output
    fake_upstream.fail(None)
    assert server.get("/root/pypi/+simple/", headers=JSON)[0] == 200
    log = server.log()
    assert "127.0.0.1" in log
    assert password not in log


# --- HTML-only upstreams and PEP 658 ------------------------------------------------------------


def test_html_only_upstream_works_for_pip(server_factory, fake_upstream, tmp_path):
    """PEP 691: an HTML-only upstream still gives hashes, versions, metadata and installs."""
    fake_upstream.html_only = True
    wheel, data = add_wheel(fake_upstream, "html-only", "1.5.0", requires_python=">=3.8")
    server = start_mirror(server_factory, fake_upstream)

    status, _headers, document = page(server, "root/pypi", "html-only")
    assert status == 200
    entry = file_entry(document, wheel)
    assert entry["hashes"] == {"sha256": sha256(data)}
    assert entry["requires-python"] == ">=3.8"
    assert entry["core-metadata"] == {"sha256": sha256(wheel_metadata(data))}
    assert document["versions"] == ["1.5.0"]
    pip_install(server, "root/pypi", tmp_path / "t", "html-only")
    assert (tmp_path / "t" / "html_only" / "__init__.py").is_file()
    assert blob_path(server, data).read_bytes() == data
    assert all(h["accept"].startswith(MIME_JSON) for h in fake_upstream.headers_for("/simple/"))


def test_core_metadata_is_served_when_upstream_offers_it_and_omitted_otherwise(
    server_factory, fake_upstream
):
    """PEP 658/714: FILE.metadata fetched once, hash verified; no attribute without."""
    wheel, data = add_wheel(fake_upstream, "meta")
    bare, _ = add_wheel(fake_upstream, "meta", "2.0.0", with_metadata=False)
    sdist, sdist_data = make_sdist("meta", "0.5.0")
    fake_upstream.add_file("meta", sdist, sdist_data)
    metadata = wheel_metadata(data)
    server = start_mirror(server_factory, fake_upstream)

    status, _headers, document = page(server, "root/pypi", "meta")
    assert file_entry(document, wheel)["core-metadata"] == {"sha256": sha256(metadata)}
    assert file_entry(document, bare)["core-metadata"] is False
    assert file_entry(document, sdist)["core-metadata"] is False
    html = server.get("/root/pypi/+simple/meta/")[2].decode()
    [wheel_line] = [line for line in html.splitlines() if wheel in line]
    assert f'data-core-metadata="sha256={sha256(metadata)}"' in wheel_line
    for name in (bare, sdist):
        [line] = [line for line in html.splitlines() if name in line]
        assert "data-core-metadata" not in line
        assert "data-dist-info-metadata" not in line

    url = file_entry(document, wheel)["url"] + ".metadata"
    for _ in range(2):
        status, body, error, headers = fetch(server, url)
        assert (status, error, body) == (200, None, metadata)
        assert sha256(body) == sha256(metadata)
        assert "immutable" in headers["Cache-Control"]
    assert fake_upstream.count(f"/files/{sha256(data)[:12]}/{wheel}.metadata") == 1
    assert fake_upstream.count(f"/files/{sha256(data)[:12]}/{wheel}") == 1  # only the sidecar

    for name in (bare, sdist):
        status, _body, _error, _headers = fetch(
            server, file_entry(document, name)["url"] + ".metadata"
        )
        assert status == 404


# --- several mirrors ----------------------------------------------------------------------------


def test_several_mirror_indexes_each_with_its_own_upstream(server_factory, fake_upstream):
    """Issue item 8: mirrors made by the API and by entrypoint.sh, merged by one stage."""
    main_wheel, _ = add_wheel(fake_upstream, "torchish", "1.0.0")
    with FakeUpstream() as gpu, FakeUpstream() as extra:
        gpu_wheel, gpu_data = add_wheel(
            gpu,
            "torchish",
            "1.0.0",
            python_tag="cp311",
            abi_tag="cp311",
            platform_tag="linux_x86_64",
        )
        extra_wheel, _ = add_wheel(extra, "torchish", "0.5.0")
        server = start_mirror(server_factory, fake_upstream)

        status, result, _raw = api(
            server, "PUT", "/root/gpu", {"type": "mirror", "mirror_url": gpu.url}
        )
        assert status == 201, result
        result = cli(
            server, "index", "create", "root/extra", "type=mirror", f"mirror_url={extra.url}"
        )
        assert result.returncode == 0, result.stderr
        status, result, _raw = api(
            server,
            "PUT",
            "/admin/multi",
            {"bases": ["root/pypi", "root/gpu", "root/extra"]},
        )
        assert status == 201, result

        status, _headers, document = page(server, "admin/multi", "torchish")
        assert status == 200
        urls = {f["filename"]: f["url"] for f in document["files"]}
        assert set(urls) == {main_wheel, gpu_wheel, extra_wheel}
        assert urls[gpu_wheel].startswith("/root/gpu/+f/")
        assert urls[extra_wheel].startswith("/root/extra/+f/")
        status, body, error, _headers = fetch(server, urls[gpu_wheel])
        assert (status, error, body == gpu_data) == (200, None, True)
        assert gpu.count("/simple/torchish/") == 1
        assert extra.count("/simple/torchish/") == 1
        assert fake_upstream.count("/simple/torchish/") == 1
        assert gpu.count("/files/") == 1
        assert fake_upstream.count("/files/") == 0
        assert gpu.requests["/simple/"] == extra.requests["/simple/"] == 0

        names = {
            p["name"]
            for p in json.loads(server.get("/root/gpu/+simple/", headers=JSON)[2])["projects"]
        }
        assert names == {"torchish"}


# --- counters -----------------------------------------------------------------------------------


def test_cache_counters_count_misses_hits_and_bytes(server_factory, fake_upstream):
    """Issue item 10: MirrorStats rows; misses flush at once, hits at the latest on exit."""
    wheel, data = add_wheel(fake_upstream, "counted")
    server = start_mirror(server_factory, fake_upstream)
    path = mirror_file_path(server, "counted", wheel)
    assert stats(server) == (0, 0, 0)

    assert fetch(server, path)[:3] == (200, data, None)
    assert wait_for(lambda: stats(server)[1:] == (1, len(data)), seconds=5)
    for _ in range(3):
        assert fetch(server, path)[:3] == (200, data, None)
    metadata = fetch(server, path + ".metadata")[1]
    assert metadata == wheel_metadata(data)

    server.stop()  # workers flush what they counted when they exit
    hits, misses, fetched = stats(server)
    # The sidecar is a hit too: the METADATA read from the cached wheel, never fetched upstream.
    assert hits == 4
    assert misses == 1
    assert fetched == len(data)
    assert fake_upstream.count(f"/files/{sha256(data)[:12]}/{wheel}.metadata") == 0
