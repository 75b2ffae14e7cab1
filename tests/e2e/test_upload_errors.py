"""Bad uploads get the exact status line, and leave the index exactly as it was."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.blobs import server_blob
from tests.builders import make_sdist, make_wheel, write_dist
from tests.conftest import LiveServer
from tests.e2e.helpers import (
    ADMIN,
    api,
    hosted_files,
    publish,
    raw_upload,
    sha256,
    twine_upload,
)

pytestmark = pytest.mark.e2e

PROJECT = "guarded"
BOB = ("bob", "bob-password-1")
OLD_WHEEL = make_wheel(PROJECT, "1.0")
OLD_SDIST = make_sdist(PROJECT, "1.0")
NEW_WHEEL = make_wheel(PROJECT, "2.0")  # what the bad uploads try to add
OTHER_BYTES = make_wheel(PROJECT, "1.0", summary="rebuilt with other bytes")  # same filename


def blob_keys(server: LiveServer) -> set[str]:
    """Every blob in the server's store: a rejected upload must not leave one behind."""
    return {o.key or o.name for o in server_blob(server, "0" * 64).storage.objects()}


@dataclass
class Snapshot:
    """What the index shows and stores before a bad upload."""

    files: dict[str, str]
    blobs: set[str]


@pytest.fixture(scope="module")
def guarded(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """admin/dev holds guarded 1.0 (wheel and sdist); bob exists but is not in acl_upload."""
    publish(live_server, "admin/dev", tmp_path_factory.mktemp("guarded"), OLD_WHEEL, OLD_SDIST)
    status, body, reason = api(live_server, "PUT", "/bob", {"password": BOB[1]})
    assert (status, reason) == (201, "CREATED"), body
    return live_server


@pytest.fixture
def unchanged(guarded: LiveServer) -> Iterator[Snapshot]:
    """Assert after the test that the page lists exactly the old files with the old sha256."""
    before = Snapshot(hosted_files(guarded, "admin/dev", PROJECT), blob_keys(guarded))
    assert before.files == {
        OLD_WHEEL[0]: sha256(OLD_WHEEL[1]),
        OLD_SDIST[0]: sha256(OLD_SDIST[1]),
    }
    yield before
    assert hosted_files(guarded, "admin/dev", PROJECT) == before.files
    assert blob_keys(guarded) == before.blobs


DUPLICATE_REASON = (
    f"File already exists ('{OTHER_BYTES[0]}', with sha256 hash '{sha256(OLD_WHEEL[1])}'). "
    "Index admin/dev is not volatile: upload a new version instead."
)

BAD_UPLOADS = [
    pytest.param(
        "admin/dev",
        NEW_WHEEL,
        ("admin", "wrong-password"),
        {},
        403,
        "Invalid credentials: wrong username, password or token.",
        id="wrong-password",
    ),
    pytest.param(
        "admin/dev",
        NEW_WHEEL,
        ("__token__", "pyshelf-not-a-real-token"),
        {},
        403,
        "Invalid credentials: wrong username, password or token.",
        id="unknown-token",
    ),
    pytest.param(
        "admin/dev",
        NEW_WHEEL,
        BOB,
        {},
        403,
        "The user 'bob' isn't allowed to upload to index 'admin/dev'.",
        id="user-not-in-acl-upload",
    ),
    pytest.param(
        "admin/dev",
        OTHER_BYTES,
        ADMIN,
        {},
        409,
        DUPLICATE_REASON,
        id="same-filename-other-bytes",
    ),
    pytest.param(
        "admin/dev",
        NEW_WHEEL,
        ADMIN,
        {"name": "other-project"},
        400,
        f"Name 'other-project' in the form does not match the filename {NEW_WHEEL[0]} "
        f"(project '{PROJECT}').",
        id="form-name-differs-from-filename",
    ),
    pytest.param(
        "admin/dev",
        NEW_WHEEL,
        ADMIN,
        {"version": "2.1"},
        400,
        f"Version '2.1' in the form does not match the filename {NEW_WHEEL[0]}.",
        id="form-version-differs-from-filename",
    ),
    pytest.param(
        "admin/dev",
        NEW_WHEEL,
        ADMIN,
        {"sha256_digest": "0" * 64},
        400,
        "The digest supplied does not match a digest calculated from the uploaded file.",
        id="sha256-digest-mismatch",
    ),
    pytest.param(
        "admin/dev",
        (NEW_WHEEL[0], b"this is not a zip archive\n"),
        ADMIN,
        {},
        400,
        "Invalid distribution file. File is not a zipfile",
        id="corrupt-wheel",
    ),
    pytest.param(
        "admin/dev",
        (f"{PROJECT}-2.0.tar.gz", b"\x1f\x8b\x08\x00 truncated gzip"),
        ADMIN,
        {},
        400,
        "Invalid distribution file. File is not a tarfile",
        id="corrupt-sdist",
    ),
    pytest.param(
        "root/pypi",
        NEW_WHEEL,
        ADMIN,
        {},
        403,
        "Index root/pypi is a mirror and takes no uploads; "
        "upload to a stage index (for example admin/dev).",
        id="upload-to-the-mirror",
    ),
    pytest.param(
        "admin/no-such-index",
        NEW_WHEEL,
        ADMIN,
        {},
        404,
        "Index admin/no-such-index does not exist.",
        id="unknown-index",
    ),
]


@pytest.mark.parametrize(("index", "dist", "auth", "overrides", "status", "reason"), BAD_UPLOADS)
def test_bad_upload_is_refused_with_its_status_line_and_changes_nothing(
    guarded: LiveServer,
    unchanged: Snapshot,
    index: str,
    dist: tuple[str, bytes],
    auth: tuple[str, str],
    overrides: dict[str, str],
    status: int,
    reason: str,
) -> None:
    """Each refusal names its cause in the status line and the body."""
    got_status, headers, body, got_reason = raw_upload(
        guarded, index, dist[0], dist[1], auth=auth, **overrides
    )
    assert (got_status, got_reason) == (status, reason)
    assert body.decode() == reason + "\n"  # the body says it too (HTTP/2 has no reason)
    assert headers["Cache-Control"] == "no-store"  # clients and proxies must not keep it


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        pytest.param("guar\x00ded", "guar\\x00ded", id="nul"),
        pytest.param("guarded\r\nX-Injected: 1", "guarded\\r\\nX-Injected: 1", id="crlf"),
        pytest.param("\x1b[31mgu\x85ard\x7fed", "\\x1b[31mgu\\x85ard\\x7fed", id="escape-c1-del"),
    ],
)
def test_upload_with_control_characters_in_name_is_a_400_with_them_escaped_in_the_reason(
    guarded: LiveServer, unchanged: Snapshot, name: str, shown: str
) -> None:
    """A reason echoing a control character once made gunicorn answer 500 ("Invalid status");
    now the status line carries it escaped, as Python writes it (RFC 9112 section 4)."""
    status, headers, body, reason = raw_upload(guarded, "admin/dev", *NEW_WHEEL, name=name)

    expected = f"'{shown}' is an invalid value for Name."
    assert (status, reason) == (400, expected)
    assert body.decode() == expected + "\n"
    assert "X-Injected" not in headers


def test_upload_without_credentials_is_challenged_with_401(
    guarded: LiveServer, unchanged: Snapshot
) -> None:
    """No Authorization header: 401 with a Basic challenge, never a redirect (RFC 9110 §15.5.2)."""
    status, headers, _body, reason = raw_upload(guarded, "admin/dev", *NEW_WHEEL, auth=None)

    assert (status, reason) == (401, "Authentication required: log in or pass credentials.")
    assert headers["WWW-Authenticate"] == 'Basic realm="pyshelf"'


def test_identical_reupload_is_a_200_that_changes_nothing(
    guarded: LiveServer, unchanged: Snapshot, tmp_path: Path
) -> None:
    """Same filename, same bytes: 200, so twine's retries after a 5xx are safe."""
    status, _headers, _body, reason = raw_upload(guarded, "admin/dev", *OLD_WHEEL)
    assert (status, reason) == (200, "OK")

    result = twine_upload(guarded, "admin/dev", [write_dist(tmp_path, *OLD_WHEEL)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_twine_shows_the_reason_when_a_filename_is_reused_with_other_bytes(
    guarded: LiveServer, unchanged: Snapshot, tmp_path: Path
) -> None:
    """twine prints the 409 and its reason, which starts "File already exists"."""
    result = twine_upload(guarded, "admin/dev", [write_dist(tmp_path, *OTHER_BYTES)])

    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode != 0
    assert "409" in output
    assert "File already exists" in output


def test_twine_shows_the_reason_for_a_wrong_password(
    guarded: LiveServer, unchanged: Snapshot, tmp_path: Path
) -> None:
    """twine sends credentials pre-emptively; a wrong password is a 403 it reports."""
    result = twine_upload(
        guarded, "admin/dev", [write_dist(tmp_path, *NEW_WHEEL)], password="not-the-password"
    )

    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "403" in output
    assert "Invalid credentials" in output


def test_upload_above_max_upload_size_is_a_413_naming_the_limit(
    server_factory: object, tmp_path: Path
) -> None:
    """MAX_UPLOAD_SIZE=1M refuses a 1.5 MiB wheel with 413 and the limit in bytes."""
    server = server_factory(MAX_UPLOAD_SIZE="1M")  # type: ignore[operator]
    small = make_wheel("bulky", "1.0")
    publish(server, "admin/dev", tmp_path / "small", small)
    before = blob_keys(server)
    # Random bytes do not compress, so the wheel really is larger than the limit.
    big = make_wheel("bulky", "2.0", files={"bulky/blob.bin": os.urandom(3 << 19)})
    assert len(big[1]) > 1 << 20

    status, _headers, _body, reason = raw_upload(server, "admin/dev", *big)
    assert (status, reason) == (413, "File too large. Limit is 1048576 bytes (MAX_UPLOAD_SIZE).")

    result = twine_upload(server, "admin/dev", [write_dist(tmp_path, *big)])
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "413" in output
    assert hosted_files(server, "admin/dev", "bulky") == {small[0]: sha256(small[1])}
    assert blob_keys(server) == before
