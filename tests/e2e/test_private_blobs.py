"""One blob store for every index, and no way to read another index's blob by its sha256
(issue #15 item 1): a mirror serves only bytes it fetched from its own upstream, on a live
server (gunicorn, two workers) in front of fake upstreams."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.blobs import server_blob
from tests.builders import make_wheel, wheel_metadata
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth
from tests.e2e.helpers import api, raw_upload
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-password", "mallory": "mallory-password"}
ADMIN = ("admin", ADMIN_PASSWORD)
SECRET_SUMMARY = "alice's unreleased secret"
SECRET = make_wheel(
    "secretpkg", "1.0", summary=SECRET_SUMMARY, files={"secretpkg/key.txt": b"private bytes\n"}
)
# The attacker does not have alice's bytes: its upstream serves a look-alike of the same name.
LOOK_ALIKE = make_wheel("secretpkg", "1.0", summary="a look-alike")
FILENAME = SECRET[0]
HANG_GUARD_SECONDS = 30
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

StartServer = Callable[..., LiveServer]


def sha256(data: bytes) -> str:
    """Lowercase hex sha256."""
    return hashlib.sha256(data).hexdigest()


def answer(
    server: LiveServer, path: str, auth: tuple[str, str] | None, method: str = "GET"
) -> tuple[int, str, bytes, bool, str | None]:
    """(status, reason, body received, whether the body was cut, Cache-Control) of a request
    read to its end; an answer whose body is cut is an answer too."""
    headers = {"Authorization": basic_auth(*auth)} if auth else {}
    request = urllib.request.Request(server.url + path, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=HANG_GUARD_SECONDS) as response:
            try:
                body, is_cut = response.read(), False
            except (http.client.IncompleteRead, OSError) as exc:
                body, is_cut = getattr(exc, "partial", b""), True
            return (
                response.status,
                response.reason,
                body,
                is_cut,
                response.headers.get("Cache-Control"),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, exc.reason, exc.read(), False, exc.headers.get("Cache-Control")


@pytest.fixture
def victim(server_factory: StartServer, fake_upstream: FakeUpstream) -> LiveServer:
    """A server where alice's read-restricted alice/private holds SECRET, and mallory exists."""
    server = server_factory(MIRROR_URL=fake_upstream.url)
    for user, password in PASSWORDS.items():
        status, body, _ = api(server, "PUT", f"/{user}", {"password": password})
        assert status == 201, body
    alice = ("alice", PASSWORDS["alice"])
    status, body, _ = api(server, "PUT", "/alice/private", {"acl_read": ["alice"]}, auth=alice)
    assert status == 201, body
    status, _headers, body, reason = raw_upload(server, "alice/private", *SECRET, auth=alice)
    assert status == 200, (reason, body)
    return server


def make_mirror(server: LiveServer, path: str, upstream: FakeUpstream) -> None:
    """An admin makes a mirror index `path` of `upstream` (whoever owns it, it must not leak)."""
    status, body, _ = api(
        server, "PUT", f"/{path}", {"type": "mirror", "mirror_url": upstream.url}, auth=ADMIN
    )
    assert status == 201, body


def test_a_mirror_listing_a_private_wheels_sha256_answers_as_for_an_unknown_hash(
    victim: LiveServer, fake_upstream: FakeUpstream
) -> None:
    """The attack: mallory's mirror lists alice's filename with alice's sha256 (and her
    METADATA's); anonymously and as mallory, the file, its sidecar, a HEAD and the web page
    give nothing of alice's and answer exactly as a mirror listing a hash stored nowhere."""
    secret_sha, secret_meta_sha = sha256(SECRET[1]), sha256(wheel_metadata(SECRET[1]))
    look_alike_metadata = wheel_metadata(LOOK_ALIKE[1])
    fake_upstream.add_file(
        "secretpkg",
        *LOOK_ALIKE,
        metadata=look_alike_metadata,
        listed_sha256=secret_sha,
        listed_metadata_sha256=secret_meta_sha,
    )
    unknown_sha, unknown_meta_sha = sha256(os.urandom(32)), sha256(os.urandom(32))
    with FakeUpstream() as control:
        control.add_file(
            "secretpkg",
            *LOOK_ALIKE,
            metadata=look_alike_metadata,
            listed_sha256=unknown_sha,
            listed_metadata_sha256=unknown_meta_sha,
        )
        make_mirror(victim, "mallory/m", fake_upstream)
        make_mirror(victim, "mallory/control", control)
        answers: dict[str, list[tuple[object, ...]]] = {"private": [], "unknown": []}
        cases = (("private", "m", secret_sha), ("unknown", "control", unknown_sha))
        for auth in (None, ("mallory", PASSWORDS["mallory"])):
            for case, index, sha in cases:
                base = f"/mallory/{index}/+f/{sha}/{FILENAME}"
                for path, method in ((base, "HEAD"), (base, "GET"), (base + ".metadata", "GET")):
                    answers[case].append(answer(victim, path, auth, method))
                # Twice: the second time the files fast path (app/http/files.py) may answer.
                answers[case].append(answer(victim, base, auth))
                answers[case].append(answer(victim, base + ".metadata", auth))

    assert answers["private"] == answers["unknown"]
    bodies = b"".join(a[2] for a in answers["private"])
    assert SECRET[1] not in bodies
    assert b"private bytes" not in bodies
    assert SECRET_SUMMARY.encode() not in bodies
    status, _headers, page, _reason = victim.get(
        "/mallory/m/secretpkg/",
        headers={"Authorization": basic_auth("mallory", PASSWORDS["mallory"])},
    )
    assert status == 200
    assert SECRET_SUMMARY.encode() not in page
    # Alice still reads her own file.
    status, _headers, body, _reason = victim.get(
        f"/alice/private/+f/{secret_sha}/{FILENAME}",
        headers={"Authorization": basic_auth("alice", PASSWORDS["alice"])},
    )
    assert (status, body) == (200, SECRET[1])


def test_mirrors_download_bytes_an_upload_already_stored_and_keep_the_stored_copy(
    victim: LiveServer, fake_upstream: FakeUpstream
) -> None:
    """Dedup after verification: two mirrors whose upstream offers the very bytes of alice's
    upload each download them once, then serve them from the cache; the stored blob is the
    upload's own file, never rewritten."""
    fake_upstream.add_file("secretpkg", *SECRET, metadata=wheel_metadata(SECRET[1]))
    make_mirror(victim, "mallory/m", fake_upstream)
    blob = server_blob(victim, sha256(SECRET[1])).path  # None: S3 (no inode to compare)
    inode = blob.stat().st_ino if blob is not None else None
    for index in ("root/pypi", "mallory/m"):
        path = f"/{index}/+f/{sha256(SECRET[1])}/{FILENAME}"
        before = fake_upstream.count("/files/")
        for _attempt in range(2):
            status, _reason, body, is_cut, _cache = answer(victim, path, None)
            assert (status, body, is_cut) == (200, SECRET[1], False)
        assert fake_upstream.count("/files/") == before + 1, index
    if blob is not None:
        assert blob.stat().st_ino == inode
