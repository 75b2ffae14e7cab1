"""Uploads through the legacy API, POST /USER/INDEX/ (PEP 427, 527, 625)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from app.cli import accounts
from app.data.models import File, Project
from app.http import api, auth
from tests.builders import make_sdist, make_wheel
from tests.conftest import basic_auth

WHEEL, WHEEL_BYTES = make_wheel(
    "Demo.Pkg",
    "1.0.0",
    summary="A demo package",
    requires_dist=["requests>=2", "click; extra == 'cli'"],
    requires_python=">=3.8",
)
SDIST, SDIST_BYTES = make_sdist("Demo.Pkg", "1.0.0", requires_python=">=3.8")
MAX_UPLOAD_BYTES = 2 << 20  # the `settings` fixture's MAX_UPLOAD_SIZE


@pytest.fixture(autouse=True)
def fast_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash passwords with 1-round PBKDF2 instead of scrypt: ~0.1 s saved per login (tests only)."""

    def fast(password: str) -> str:
        return generate_password_hash(password, "pbkdf2:sha256:1")

    for module in (auth, api, accounts):
        monkeypatch.setattr(module, "hash_password", fast)


def upload_form(filename: str, content: bytes, /, **fields: Any) -> dict[str, Any]:
    """A complete twine-style form for `filename`; a field given as None is left out."""
    is_wheel = filename.endswith(".whl")
    stem = filename.removesuffix(".tar.gz").removesuffix(".whl")
    name, version = ([*stem.split("-"), ""])[:2]
    form: dict[str, Any] = {
        ":action": "file_upload",
        "protocol_version": "1",
        "metadata_version": "2.1",
        "name": name,
        "version": version,
        "filetype": "bdist_wheel" if is_wheel else "sdist",
        "pyversion": "py3" if is_wheel else "source",
        "sha256_digest": hashlib.sha256(content).hexdigest(),
        "content": (io.BytesIO(content), filename),
    }
    form.update(fields)
    return {key: value for key, value in form.items() if value is not None}


def upload(
    client: Any,
    filename: str,
    content: bytes,
    /,
    *,
    headers: dict[str, str] | None,
    path: str = "/admin/dev/",
    **fields: Any,
) -> Any:
    """POST one distribution as twine does (multipart/form-data)."""
    return client.post(
        path,
        data=upload_form(filename, content, **fields),
        headers=headers or {},
        content_type="multipart/form-data",
    )


def create_user(client: Any, admin_auth: dict[str, str], username: str, password: str) -> None:
    """Create a plain user through the JSON API."""
    response = client.put(f"/{username}", json={"password": password}, headers=admin_auth)
    assert response.status_code == 201, response.status


def files_under(directory: Path) -> set[str]:
    """Every file below `directory`, relative, to compare before and after a request."""
    if not directory.exists():
        return set()
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def stored_blobs(app: Any) -> set[str]:
    """Every object in the app's blob store (local or S3): keys, or the names of strays."""
    return {o.key or o.name for o in app.extensions["pyshelf.storage"].objects()}


def read_blob(app: Any, key: str) -> bytes:
    """A stored blob's bytes, from whichever store the app uses."""
    with app.extensions["pyshelf.storage"].open(key) as blob:
        return blob.read()


def count_rows(app: Any, model: type) -> int:
    """How many rows a table holds."""
    with app.extensions["pyshelf.db"].session() as session:
        return session.scalar(select(func.count()).select_from(model))


def stored_file(app: Any, filename: str) -> File | None:
    """The File row of `filename` on any index."""
    with app.extensions["pyshelf.db"].session() as session:
        return session.scalar(select(File).where(File.filename == filename))


# --- bad inputs ------------------------------------------------------------------------------

CORRUPT = b"this is not a zip file\n" * 10


BAD_UPLOADS = [
    pytest.param(
        {"fields": {":action": None}},
        "400 Missing ':action' field: expected 'file_upload'.",
        id="missing-action",
    ),
    pytest.param(
        {"fields": {":action": "frobnicate"}},
        "400 Unknown ':action' 'frobnicate': expected 'file_upload'.",
        id="unknown-action",
    ),
    pytest.param(
        {"fields": {":action": "submit"}},
        "410 Project pre-registration is no longer required or supported, "
        "upload your files instead.",
        id="submit-is-gone",
    ),
    pytest.param(
        {"fields": {"protocol_version": "2"}},
        "400 Unknown protocol version.",
        id="protocol-version-2",
    ),
    pytest.param(
        {"fields": {"content": None}},
        "400 Upload payload does not have a file.",
        id="no-content",
    ),
    pytest.param(
        {"filename": "demo_pkg-1.0.0.exe", "fields": {"filetype": "bdist_wininst"}},
        "400 Invalid file extension: Use .tar.gz, .whl or .zip extension. See "
        "https://www.python.org/dev/peps/pep-0527 and https://peps.python.org/pep-0715/ "
        "for more information",
        id="bad-extension",  # PEP 527
    ),
    pytest.param(
        {"fields": {"filetype": "sdist", "pyversion": "source"}},
        "400 Invalid file extension: Extension .whl is invalid for filetype sdist. "
        "See https://www.python.org/dev/peps/pep-0527 for more information.",
        id="extension-not-matching-filetype",  # PEP 527
    ),
    pytest.param(
        {"fields": {"name": "other-pkg"}},
        f"400 Name 'other-pkg' in the form does not match the filename {WHEEL} "
        "(project 'demo-pkg').",
        id="name-mismatch",  # PEP 427
    ),
    pytest.param(
        {"fields": {"name": None}},
        "400 Missing form field: 'name' and 'version' are required.",
        id="missing-name",
    ),
    pytest.param(
        {"fields": {"name": "demo pkg!"}},
        "400 'demo pkg!' is an invalid value for Name.",
        id="invalid-name",
    ),
    pytest.param(
        {"fields": {"version": "one"}},
        "400 'one' is an invalid value for Version (PEP 440).",
        id="invalid-version",
    ),
    pytest.param(
        {"fields": {"version": "2.0"}},
        f"400 Version '2.0' in the form does not match the filename {WHEEL}.",
        id="version-mismatch",  # PEP 427
    ),
    pytest.param(
        {"content": make_wheel("demo-pkg", "1.0.0", dist_name="other-pkg")[1]},
        "400 Start filename for 'other-pkg' with 'other_pkg'.",
        id="metadata-name-mismatch",  # PEP 427
    ),
    pytest.param(
        {"content": make_wheel("Demo.Pkg", "1.0.0", omit=["METADATA"])[1]},
        f"400 Wheel '{WHEEL}' does not contain the required METADATA file: "
        "demo_pkg-1.0.0.dist-info/METADATA",
        id="wheel-without-metadata",  # PEP 427
    ),
    pytest.param(
        {"filename": f"../{WHEEL}"},
        "400 Cannot upload a file with '/' or '\\' in the name.",
        id="path-in-filename",
    ),
    pytest.param(
        {"filename": SDIST, "content": SDIST_BYTES, "fields": {"pyversion": "py3"}},
        "400 Use 'source' as Python version for an sdist.",
        id="sdist-with-pyversion",
    ),
    pytest.param(
        {"fields": {"filetype": "bdist_egg"}},
        "400 Invalid value for filetype. Error: Use a known file type.",
        id="bad-filetype",
    ),
    pytest.param(
        {"fields": {"pyversion": None}},
        "400 Python version is required for binary distribution uploads.",
        id="wheel-without-pyversion",
    ),
    pytest.param(
        {"fields": {"sha256_digest": "0" * 64}},
        "400 The digest supplied does not match a digest calculated from the uploaded file.",
        id="digest-mismatch",
    ),
    pytest.param(
        {"fields": {"sha256_digest": None}},
        "400 Error: Include at least one message digest.",
        id="no-digest",
    ),
    pytest.param(
        {"content": CORRUPT},
        "400 Invalid distribution file. File is not a zipfile",
        id="corrupt-zip",
    ),
    pytest.param(
        {"auth": "none"},
        "401 Authentication required: log in or pass credentials.",
        id="missing-auth",  # RFC 9110 §15.5.2
    ),
    pytest.param(
        {"auth": "wrong"},
        "403 Invalid credentials: wrong username, password or token.",
        id="wrong-password",
    ),
    pytest.param(
        {"auth": "malformed"},
        "400 Malformed Basic Authorization header.",
        id="malformed-basic-header",  # RFC 7617
    ),
    pytest.param(
        {"auth": "bob"},
        "403 The user 'bob' isn't allowed to upload to index 'admin/dev'.",
        id="not-in-acl-upload",
    ),
    pytest.param(
        {"path": "/root/pypi/"},
        "403 Index root/pypi is a mirror and takes no uploads; "
        "upload to a stage index (for example admin/dev).",
        id="mirror-index",
    ),
    pytest.param(
        {"path": "/admin/nope/"},
        "404 Index admin/nope does not exist.",
        id="unknown-index",
    ),
    pytest.param(
        {"content": WHEEL_BYTES + b"\0" * (MAX_UPLOAD_BYTES + 1 - len(WHEEL_BYTES))},
        f"413 File too large. Limit is {MAX_UPLOAD_BYTES} bytes (MAX_UPLOAD_SIZE).",
        id="oversize",
    ),
]


@pytest.mark.parametrize(("case", "status"), BAD_UPLOADS)
def test_upload_rejects_bad_input_with_its_reason_and_changes_nothing(
    app: Any, client: Any, admin_auth: dict[str, str], settings: Any, case: dict, status: str
) -> None:
    """Every refusal names its reason in the status line and the body, storing nothing."""
    if case.get("auth") == "bob":
        create_user(client, admin_auth, "bob", "bob-password")
    headers = {
        "admin": admin_auth,
        "none": {},
        "wrong": {"Authorization": basic_auth("admin", "not-the-password")},
        "malformed": {"Authorization": "Basic !!!not-base64!!!"},
        "bob": {"Authorization": basic_auth("bob", "bob-password")},
    }[case.get("auth", "admin")]
    blobs_before = stored_blobs(app)

    response = upload(
        client,
        case.get("filename", WHEEL),
        case.get("content", WHEEL_BYTES),
        headers=headers,
        path=case.get("path", "/admin/dev/"),
        **case.get("fields", {}),
    )

    assert response.status == status
    assert status.split(" ", 1)[1] in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"  # RFC 9111 §5.2.2.5
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"] == 'Basic realm="pyshelf"'  # RFC 9110 §15.5.2
    assert count_rows(app, Project) == 0
    assert count_rows(app, File) == 0
    assert files_under(settings.tmp_dir) == set()
    assert stored_blobs(app) == blobs_before


def test_upload_beyond_the_request_size_limit_is_413_and_leaves_no_temp_file(
    app: Any, client: Any, admin_auth: dict[str, str], settings: Any
) -> None:
    """A body past MAX_UPLOAD_SIZE + 32 MiB is refused before it is read, never a 5xx."""
    limit = MAX_UPLOAD_BYTES + (32 << 20)
    content = WHEEL_BYTES + b"\0" * (limit - len(WHEEL_BYTES))

    response = upload(client, WHEEL, content, headers=admin_auth)

    size = response.request.content_length
    assert response.status == (
        f"413 Request body too large: {size} bytes; this URL takes at most {limit} "
        "(MAX_UPLOAD_SIZE plus 32 MiB of form fields)."
    )
    assert count_rows(app, File) == 0
    assert files_under(settings.tmp_dir) == set()


def test_upload_errors_answer_json_to_clients_that_prefer_it(
    client: Any, admin_auth: dict[str, str]
) -> None:
    """uv prefers application/json and shows `code`: Pyramid's error shape."""
    uv_accept = "application/json;q=0.9, text/plain;q=0.8, text/html;q=0.7"

    response = upload(
        client,
        WHEEL,
        WHEEL_BYTES,
        headers={**admin_auth, "Accept": uv_accept},
        protocol_version="2",
    )

    assert response.status == "400 Unknown protocol version."
    assert response.content_type == "application/json"
    assert response.get_json()["code"] == "400 Unknown protocol version."
    assert response.get_json()["message"] == "Unknown protocol version."


# --- happy paths -----------------------------------------------------------------------------


def test_upload_stores_a_wheel_with_its_metadata_sidecar(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """A wheel gets a row, a blob and a PEP 658 sidecar blob of its METADATA (PEP 658)."""
    response = upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth)

    assert response.status == "200 OK"
    record = stored_file(app, WHEEL)
    assert record is not None
    assert record.sha256 == hashlib.sha256(WHEEL_BYTES).hexdigest()
    assert record.size == len(WHEEL_BYTES)
    assert record.filetype == "bdist_wheel"
    assert record.pyversion == "py3"
    assert record.uploader == "admin"
    assert read_blob(app, record.sha256) == WHEEL_BYTES
    assert record.metadata_sha256 is not None
    sidecar = read_blob(app, record.metadata_sha256)
    assert hashlib.sha256(sidecar).hexdigest() == record.metadata_sha256
    assert sidecar.startswith(b"Metadata-Version: 2.1\nName: Demo.Pkg\n")
    with app.extensions["pyshelf.db"].session() as session:
        project = session.scalar(select(Project))
        assert (project.name, project.normalized_name) == ("Demo.Pkg", "demo-pkg")


def test_upload_stores_an_sdist_without_a_sidecar(
    app: Any, client: Any, admin_auth: dict[str, str], settings: Any
) -> None:
    """An sdist is stored, but only wheels get a `.metadata` sidecar (PEP 658)."""
    response = upload(client, SDIST, SDIST_BYTES, headers=admin_auth)

    assert response.status == "200 OK"
    record = stored_file(app, SDIST)
    assert record is not None
    assert record.filetype == "sdist"
    assert record.pyversion == "source"
    assert record.metadata_sha256 is None
    assert record.requires_python == ">=3.8"
    assert stored_blobs(app) == {record.sha256}


def test_upload_extracts_core_metadata_from_the_wheel(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """Summary, Requires-Dist and Requires-Python come from METADATA, not from the form."""
    response = upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth, summary="a lie in the form")

    assert response.status == "200 OK"
    record = stored_file(app, WHEEL)
    assert record.requires_python == ">=3.8"
    assert record.core_metadata["summary"] == "A demo package"
    assert record.core_metadata["requires_dist"] == ["requests>=2", "click; extra == 'cli'"]
    assert record.core_metadata["requires_python"] == ">=3.8"
    assert record.core_metadata["name"] == "Demo.Pkg"
    assert "raw" not in record.core_metadata


def test_identical_reupload_answers_200_and_changes_nothing(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """Re-sending the same bytes is a 200, so twine's retries are safe."""
    first = upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth)
    before = stored_file(app, WHEEL)

    again = upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth)

    assert (first.status, again.status) == ("200 OK", "200 OK")
    assert count_rows(app, File) == 1
    after = stored_file(app, WHEEL)
    assert (after.id, after.uploaded_at) == (before.id, before.uploaded_at)


def test_other_bytes_under_an_existing_filename_are_refused_with_409(
    app: Any, client: Any, admin_auth: dict[str, str], settings: Any
) -> None:
    """A filename never gets other bytes; the reason starts 'File already exists'."""
    upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth)
    blobs_before = stored_blobs(app)
    filename, other = make_wheel("Demo.Pkg", "1.0.0", summary="Different bytes")
    assert filename == WHEEL

    response = upload(client, WHEEL, other, headers=admin_auth)

    assert response.status_code == 409
    assert response.status.startswith("409 File already exists ('demo_pkg-1.0.0-py3-none-any.whl'")
    assert response.get_data(as_text=True).startswith("File already exists")
    assert stored_file(app, WHEEL).sha256 == hashlib.sha256(WHEEL_BYTES).hexdigest()
    assert stored_blobs(app) == blobs_before
    assert files_under(settings.tmp_dir) == set()


def test_volatile_index_replaces_a_file_with_other_bytes(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """`volatile` is the deliberate exception to immutability."""
    patched = client.patch("/admin/dev", json={"volatile": True}, headers=admin_auth)
    assert patched.status_code == 200
    upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth)
    _, other = make_wheel("Demo.Pkg", "1.0.0", summary="Replaced")

    response = upload(client, WHEEL, other, headers=admin_auth)

    assert response.status == "200 OK"
    assert count_rows(app, File) == 1
    record = stored_file(app, WHEEL)
    assert record.sha256 == hashlib.sha256(other).hexdigest()
    assert record.core_metadata["summary"] == "Replaced"


def _new_token(client: Any, admin_auth: dict[str, str]) -> str:
    response = client.post("/admin/+tokens", headers=admin_auth)
    assert response.status_code == 201
    return response.get_json()["result"]["token"]


@pytest.mark.parametrize(
    "scheme",
    [
        pytest.param(lambda token: basic_auth("__token__", token), id="basic-__token__"),
        pytest.param(lambda token: f"Bearer {token}", id="bearer"),
        pytest.param(lambda token: f"Token {token}", id="token"),
    ],
)
def test_upload_accepts_an_api_token(
    app: Any, client: Any, admin_auth: dict[str, str], scheme: Any
) -> None:
    """Tokens work as the password of __token__, and as Bearer/Token credentials (RFC 7617)."""
    token = _new_token(client, admin_auth)

    response = upload(client, WHEEL, WHEEL_BYTES, headers={"Authorization": scheme(token)})

    assert response.status == "200 OK"
    assert stored_file(app, WHEEL).uploader == "admin"


def test_upload_refuses_an_unknown_token(client: Any, admin_auth: dict[str, str]) -> None:
    """A token that was never issued is wrong credentials: 403."""
    response = upload(
        client, WHEEL, WHEEL_BYTES, headers={"Authorization": "Bearer pyshelf-made-up"}
    )

    assert response.status == "403 Invalid credentials: wrong username, password or token."


def test_password_containing_colons_authenticates(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """Basic credentials split on the first ':' only (RFC 7617)."""
    create_user(client, admin_auth, "carol", "pa:ss:w:rd")
    client.patch("/admin/dev", json={"acl_upload": ["admin", "carol"]}, headers=admin_auth)

    response = upload(
        client, WHEEL, WHEEL_BYTES, headers={"Authorization": basic_auth("carol", "pa:ss:w:rd")}
    )

    assert response.status == "200 OK"
    assert stored_file(app, WHEEL).uploader == "carol"


def test_upload_works_without_trailing_slash(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """twine refuses redirects, so the slash-less upload URL must work directly."""
    response = upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth, path="/admin/dev")

    assert response.status == "200 OK"
    assert stored_file(app, WHEEL) is not None


def test_upload_treats_empty_and_unknown_fields_as_absent(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """pdm sends "" for missing fields and old tools send UNKNOWN."""
    response = upload(
        client,
        SDIST,
        SDIST_BYTES,
        headers=admin_auth,
        pyversion="",
        md5_digest="",
        blake2_256_digest="UNKNOWN",
        requires_python="",
    )

    assert response.status == "200 OK"


def test_upload_accepts_any_single_correct_digest(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """twine ≥ 6.2 sends no md5 and FIPS builds no blake2: any one digest suffices."""
    response = upload(
        client,
        WHEEL,
        WHEEL_BYTES,
        headers=admin_auth,
        sha256_digest=None,
        blake2_256_digest=hashlib.blake2b(WHEEL_BYTES, digest_size=32).hexdigest().upper(),
    )

    assert response.status == "200 OK"
