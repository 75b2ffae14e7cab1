"""Release files and sidecars at /USER/INDEX/+f/SHA256/FILENAME: the view (app/http/files.py
release_file) and the WSGI fast path in front of it (CachedFiles), which must answer exactly as
the view does for what it serves and leave everything else to it.

Covers PEP 658 sidecars, ranges and validators (RFC 9110 §13, §14), the sha256 naming the bytes,
immutable caching (RFC 8246) and read access. Mirrored files and sidecars in front of
Flask are tested in tests/test_mirror.py, with its fake upstream.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from app.http.files import CachedFiles
from tests.blobs import stored_blob
from tests.builders import make_wheel, wheel_metadata
from tests.conftest import basic_auth
from tests.test_upload import fast_password_hashes, upload  # noqa: F401 - autouse fixture

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}
VOLATILE = ("X-Request-ID", "Date")


class Views:
    """Counts the requests that reach release_file (the rest were answered in front of Flask)."""

    def __init__(self, app: Any) -> None:
        self.calls = 0
        # Blobs in S3 always take the view (streamed or redirected after its access check).
        self.fast_path = hasattr(app.extensions["pyshelf.storage"], "local_path")
        view = app.view_functions["files.release_file"]

        def counted(**kwargs: Any) -> Any:
            self.calls += 1
            return view(**kwargs)

        app.view_functions["files.release_file"] = counted


@pytest.fixture
def views(app: Any) -> Views:
    """release_file of the unit app, counted."""
    return Views(app)


@pytest.fixture
def hosted(client: Any, admin_auth: dict[str, str]) -> dict[str, Any]:
    """filepkg 1.0 uploaded to admin/dev: its wheel, sidecar bytes and +f URL."""
    filename, data = make_wheel("filepkg", "1.0", files={"filepkg/x.bin": os.urandom(5000)})
    assert upload(client, filename, data, headers=admin_auth).status_code == 200
    page = client.get("/admin/dev/+simple/filepkg/", headers=JSON).get_json()
    url = next(f["url"] for f in page["files"] if f["filename"] == filename)
    return {"filename": filename, "data": data, "metadata": wheel_metadata(data), "url": url}


def headers_of(response: Any) -> dict[str, str]:
    """The headers to compare. flask-login reads the session on every view response, so the
    view adds `Vary: Cookie`, which bytes named by their sha256 do not depend on."""
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE}
    if headers.get("Vary") == "Cookie":
        del headers["Vary"]
    return headers


def from_view(monkeypatch: pytest.MonkeyPatch, client: Any, url: str, **kwargs: Any) -> Any:
    """The same request answered by release_file (the fast path turned off)."""
    with monkeypatch.context() as patch:
        patch.setattr(CachedFiles, "_find", lambda *args: None)
        return client.get(url, **kwargs)


@pytest.mark.parametrize("sidecar", [False, True], ids=["wheel", "sidecar"])
def test_a_public_upload_is_sent_before_flask_exactly_as_the_view_sends_it(
    monkeypatch: pytest.MonkeyPatch, client: Any, views: Views, hosted: dict, sidecar: bool
) -> None:
    """PEP 658; RFC 8246: the fast path's status, headers and bytes are the view's."""
    url = hosted["url"] + (".metadata" if sidecar else "")
    fast = client.get(url)
    assert views.calls == (0 if views.fast_path else 1)
    slow = from_view(monkeypatch, client, url)

    assert fast.status == slow.status == "200 OK"
    assert fast.get_data() == slow.get_data() == hosted["metadata" if sidecar else "data"]
    assert headers_of(fast) == headers_of(slow)
    expected_type = "text/plain; charset=utf-8" if sidecar else "application/octet-stream"
    assert fast.headers["Content-Type"] == expected_type
    assert "immutable" in fast.headers["Cache-Control"]


def test_head_of_a_stored_file_has_its_length_and_no_body(
    client: Any, views: Views, hosted: dict
) -> None:
    """HEAD before Flask: the length of the file, no bytes."""
    head = client.head(hosted["url"])
    assert (head.status_code, head.get_data()) == (200, b"")
    assert views.calls == (0 if views.fast_path else 1)
    assert head.headers["Content-Length"] == str(len(hosted["data"]))


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Range": "bytes=0-9"}, 206), ({"If-None-Match": "ETAG"}, 304)],
    ids=["range", "revalidation"],
)
def test_ranges_and_revalidations_are_left_to_the_view(
    client: Any, views: Views, hosted: dict, headers: dict[str, str], status: int
) -> None:
    """Ranges and validators (RFC 9110 §13, §14): werkzeug's rules stay in one place, the view."""
    etag = client.get(hosted["url"]).headers["ETag"]
    before = views.calls
    sent = {k: v.replace("ETAG", etag) for k, v in headers.items()}
    response = client.get(hosted["url"], headers=sent)
    assert (response.status_code, views.calls - before) == (status, 1)
    if status == 206:
        assert response.get_data() == hosted["data"][:10]


def test_a_restricted_index_goes_through_the_views_access_check(
    client: Any, views: Views, hosted: dict, admin_auth: dict[str, str]
) -> None:
    """RFC 9110 §15.5.2: nothing of an index that is not public is answered in front of Flask."""
    patched = client.patch("/admin/dev", json={"acl_read": [":AUTHENTICATED:"]}, headers=admin_auth)
    assert patched.status_code == 200, patched.get_data(as_text=True)

    anonymous = client.get(hosted["url"])
    assert anonymous.status_code == 401
    reader = client.get(hosted["url"], headers=admin_auth)
    assert (reader.status_code, reader.get_data()) == (200, hosted["data"])
    assert views.calls == 2


def test_a_sha256_under_another_filename_is_a_404_from_the_view(
    client: Any, views: Views, hosted: dict
) -> None:
    """The URL must name this index's file exactly; the fast path does not guess."""
    wrong = hosted["url"].replace(hosted["filename"], "filepkg-2.0-py3-none-any.whl")
    response = client.get(wrong)
    assert (response.status_code, views.calls) == (404, 1)


def test_a_blob_missing_from_the_store_is_a_404_that_says_so(
    app: Any, client: Any, views: Views, hosted: dict
) -> None:
    """A lost blob falls through to the view, whose reason names the file."""
    stored_blob(app, hashlib.sha256(hosted["data"]).hexdigest()).unlink()
    response = client.get(hosted["url"])
    assert (response.status_code, views.calls) == (404, 1)
    assert "missing from the blob store" in response.get_data(as_text=True)


# --- ACCEL_REDIRECT_PREFIX: nginx sends the bytes of what pyshelf allows ----------------------

ACCEL_PREFIX = "/_pyshelf_blobs"


@pytest.fixture
def accel(settings: Any) -> None:
    """ACCEL_REDIRECT_PREFIX set (before the app is built)."""
    object.__setattr__(settings, "accel_redirect_prefix", ACCEL_PREFIX)


def accel_uri(sha256: str) -> str:
    """Where the blob lies under the blob directory, below the prefix."""
    return f"{ACCEL_PREFIX}/{sha256[:2]}/{sha256[2:4]}/{sha256}"


@pytest.mark.parametrize("sidecar", [False, True], ids=["wheel", "sidecar"])
@pytest.mark.parametrize("path", ["fast", "view"])
def test_accel_redirect_sends_headers_and_leaves_the_bytes_to_nginx(
    accel: None,
    monkeypatch: pytest.MonkeyPatch,
    client: Any,
    views: Views,
    hosted: dict,
    sidecar: bool,
    path: str,
) -> None:
    """An allowed download is the file's headers, no body, and X-Accel-Redirect to its blob."""
    if not views.fast_path:
        pytest.skip("ACCEL_REDIRECT_PREFIX is for disk storage")
    url = hosted["url"] + (".metadata" if sidecar else "")
    response = client.get(url) if path == "fast" else from_view(monkeypatch, client, url)
    assert views.calls == (0 if path == "fast" else 1)
    blob = hosted["metadata" if sidecar else "data"]
    sha256 = hashlib.sha256(blob).hexdigest()
    assert (response.status, response.get_data()) == ("200 OK", b"")
    assert response.headers["X-Accel-Redirect"] == accel_uri(sha256)
    assert response.headers["ETag"] == f'"{sha256}"'
    assert "immutable" in response.headers["Cache-Control"]
    expected_type = "text/plain; charset=utf-8" if sidecar else "application/octet-stream"
    assert response.headers["Content-Type"] == expected_type


@pytest.mark.parametrize(
    ("headers", "status", "redirected"),
    [({"Range": "bytes=0-9"}, 200, True), ({"If-None-Match": "ETAG"}, 304, False)],
    ids=["range-for-nginx", "revalidation"],
)
def test_accel_redirect_answers_revalidations_and_passes_ranges_on(
    accel: None,
    client: Any,
    views: Views,
    hosted: dict,
    headers: dict[str, str],
    status: int,
    redirected: bool,
) -> None:
    """RFC 9110 §13.1.2: a matching ETag is a 304 from pyshelf; a range is nginx's to cut."""
    if not views.fast_path:
        pytest.skip("ACCEL_REDIRECT_PREFIX is for disk storage")
    sha256 = hashlib.sha256(hosted["data"]).hexdigest()
    sent = {k: v.replace("ETAG", f'"{sha256}"') for k, v in headers.items()}
    response = client.get(hosted["url"], headers=sent)
    assert (response.status_code, response.get_data()) == (status, b"")
    assert ("X-Accel-Redirect" in response.headers) is redirected


@pytest.mark.parametrize("sidecar", [False, True], ids=["wheel", "sidecar"])
def test_accel_redirect_is_never_sent_to_a_reader_the_index_refuses(
    accel: None, client: Any, views: Views, hosted: dict, admin_auth: dict[str, str], sidecar: bool
) -> None:
    """A private index's files and sidecars: anonymous, another account and a token scoped to
    another index get 401/403 and no redirect (nginx's location is internal: the header is the
    only way in); the admin, who may read, gets the redirect."""
    if not views.fast_path:
        pytest.skip("ACCEL_REDIRECT_PREFIX is for disk storage")
    for request in (
        client.put("/bob", json={"password": "bob-password"}, headers=admin_auth),
        client.patch("/admin/dev", json={"acl_read": ["admin"]}, headers=admin_auth),
    ):
        assert request.status_code in (200, 201), request.get_data(as_text=True)
    token = client.post("/admin/+tokens", json={"index": "root/pypi"}, headers=admin_auth)
    assert token.status_code == 201, token.get_data(as_text=True)
    url = hosted["url"] + (".metadata" if sidecar else "")
    for who, headers, status in (
        ("anonymous", {}, 401),
        ("bob", {"Authorization": basic_auth("bob", "bob-password")}, 403),
        (
            "scoped token",
            {"Authorization": basic_auth("__token__", token.get_json()["result"]["token"])},
            403,
        ),
        ("admin", admin_auth, 200),
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == status, who
        assert ("X-Accel-Redirect" in response.headers) is (status == 200), who
