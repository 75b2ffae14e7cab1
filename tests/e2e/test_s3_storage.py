"""STORAGE_URL=s3://...: the real pip and twine against gunicorn whose blobs live in a bucket of
a local S3 server (moto), with and without S3_REDIRECT (RFC 9110 §14 ranges, RFC 8246 caching)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import s3server
from tests.builders import make_sdist, make_wheel
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth, run_pip
from tests.e2e.helpers import api, publish, sha256
from tests.e2e.test_mirror import add_wheel, mirror_file_path
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}


@pytest.fixture(scope="module")
def moto() -> Iterator[s3server.S3Server]:
    """The session's S3 server in S3 runs; otherwise one for this module."""
    if s3server.SERVER is not None:
        yield s3server.SERVER
        return
    server = s3server.S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def start_on_s3(
    server_factory, moto: s3server.S3Server, tmp_path: Path, *, redirect: bool, **env: str
) -> LiveServer:
    """A server whose STORAGE_URL is a fresh bucket of `moto`."""
    bucket = moto.create_bucket(s3server.bucket_name(tmp_path / f"e2e-{redirect}"))
    return server_factory(
        STORAGE_URL=f"s3://{bucket}/pyshelf",
        S3_ENDPOINT_URL=moto.endpoint_url,
        S3_REDIRECT="true" if redirect else "false",
        **s3server.CREDENTIALS,
        **env,
    )


@pytest.mark.parametrize("redirect", [False, True], ids=["streamed", "redirect"])
def test_pip_installs_a_private_and_a_mirrored_package_from_s3(
    server_factory, moto, fake_upstream: FakeUpstream, tmp_path, redirect
):
    """Uploads go into the bucket under PREFIX/ab/cd/<sha256>; pip installs them and a mirrored
    dependency (cached into the bucket on the way); a read-restricted index stays private: the
    redirect to a presigned URL comes only after the access check."""
    lib_name, lib_data = add_wheel(fake_upstream, "s3-lib", "1.0")
    server = start_on_s3(
        server_factory, moto, tmp_path, redirect=redirect, MIRROR_URL=fake_upstream.url
    )
    status, _body, reason = api(
        server, "PATCH", "/admin/dev", {"acl_read": ["admin"], "bases": ["root/pypi"]}
    )
    assert status == 200, reason
    wheel = make_wheel("s3-app", "1.0", requires_dist=["s3-lib"])
    sdist = make_sdist("s3-app", "1.0")
    publish(server, "admin/dev", tmp_path / "dist", wheel, sdist)

    bucket = s3server.bucket_name(tmp_path / f"e2e-{redirect}")
    names = {item["Key"] for item in moto.client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    key = sha256(wheel[1])
    assert f"pyshelf/{key[:2]}/{key[2:4]}/{key}" in names
    assert not (server.data_dir / "blobs").exists()  # nothing on local disk

    path = f"/admin/dev/+f/{key}/{wheel[0]}"
    status, headers, _body, _reason = server.get(path)
    assert status == 401  # anonymous: no presigned URL, no bytes
    assert "Location" not in headers

    status, headers, body, _reason = server.get(path, headers=ADMIN)
    if redirect:
        assert status == 302
        location = headers["Location"]
        assert location.startswith(moto.endpoint_url)
        assert "X-Amz-Signature=" in location or "Signature=" in location
        assert body != wheel[1]
    else:
        assert status == 200
        assert body == wheel[1]
        assert headers["ETag"] == f'"{key}"'

    index = f"http://admin:{ADMIN_PASSWORD}@{server.url.removeprefix('http://')}/admin/dev/+simple/"
    target = tmp_path / "site"
    result = run_pip("install", "--target", str(target), "--index-url", index, "s3-app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "s3_app" / "__init__.py").is_file()
    assert (target / "s3_lib" / "__init__.py").is_file()
    lib_file = f"/files/{sha256(lib_data)[:12]}/{lib_name}"
    assert fake_upstream.requests[lib_file] == 1

    lib_key = sha256(lib_data)
    assert moto.client.head_object(
        Bucket=bucket, Key=f"pyshelf/{lib_key[:2]}/{lib_key[2:4]}/{lib_key}"
    )
    again = run_pip(
        "download", "--no-deps", "--dest", str(tmp_path / "again"), "--index-url",
        f"{server.url}/root/pypi/+simple/", "s3-lib",
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "again" / lib_name).read_bytes() == lib_data
    assert fake_upstream.requests[lib_file] == 1  # the second came from the bucket

    status, _headers, body, _reason = server.get("/+status")
    assert status == 200, body


def test_range_requests_pass_through_to_s3(server_factory, moto, fake_upstream, tmp_path):
    """A Range on a file served from the bucket: 206 with Content-Range, 416 past the end,
    304 for the ETag; a mirrored file cached in the bucket answers ranges too (RFC 9110 §14)."""
    name, data = add_wheel(fake_upstream, "ranged", "1.0", payload_bytes=200_000)
    server = start_on_s3(
        server_factory, moto, tmp_path, redirect=False, MIRROR_URL=fake_upstream.url
    )
    path = mirror_file_path(server, "ranged", name)
    status, _headers, body, _reason = server.get(path)
    assert (status, body) == (200, data)  # the first download caches it into the bucket

    status, headers, body, _reason = server.get(path, headers={"Range": "bytes=1000-1999"})
    assert status == 206
    assert body == data[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert headers["Content-Length"] == "1000"
    status, headers, body, _reason = server.get(path, headers={"Range": "bytes=-100"})
    assert (status, body) == (206, data[-100:])
    status, headers, _body, _reason = server.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(data)}"
    status, _headers, body, _reason = server.get(
        path, headers={"If-None-Match": f'"{sha256(data)}"'}
    )
    assert (status, body) == (304, b"")
    status, headers, body, _reason = server.get(path, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(data))
    assert headers["Accept-Ranges"] == "bytes"


def test_a_server_on_s3_refuses_a_bad_storage_url(server_factory, tmp_path):
    """STORAGE_URL is checked at start with the other variables: the server does not come up."""
    with pytest.raises(RuntimeError, match="STORAGE_URL"):
        server_factory(STORAGE_URL="s3://Not_A_Bucket/x", S3_ENDPOINT_URL="http://127.0.0.1:9")


def test_status_is_503_when_the_bucket_is_gone(server_factory, moto, tmp_path):
    """/+status writes a probe object: a bucket that is gone (or denied) makes it unhealthy."""
    server = start_on_s3(server_factory, moto, tmp_path, redirect=False)
    moto.drop_bucket(s3server.bucket_name(tmp_path / "e2e-False"))
    status, _headers, body, _reason = server.get("/+status")
    assert status == 503
    assert b"blob_store" in body
