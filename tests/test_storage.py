"""The blob store: LocalStorage and S3Storage (against a local moto server) keep one contract."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import ConfigError, Settings
from app.core.storage import StorageUnavailable, parse_storage_url
from app.core.storage_choice import make_storage
from app.core.storage_local import LocalStorage
from app.core.storage_s3 import S3Storage
from tests import s3server
from tests.conftest import ADMIN_PASSWORD, basic_auth, free_port


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def moto() -> Iterator[s3server.S3Server]:
    """The session's S3 server in S3 runs; otherwise one just for this module."""
    if s3server.SERVER is not None:
        yield s3server.SERVER
        return
    server = s3server.S3Server().start()
    saved = {name: os.environ.get(name) for name in s3server.CREDENTIALS}
    os.environ.update(s3server.CREDENTIALS)
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3(moto: s3server.S3Server, tmp_path: Path) -> Iterator[S3Storage]:
    """An S3Storage on a fresh bucket, under a prefix."""
    bucket = moto.create_bucket(s3server.bucket_name(tmp_path / "unit"))
    yield S3Storage(bucket, "some/prefix", tmp_dir=tmp_path / "tmp", endpoint_url=moto.endpoint_url)
    moto.drop_bucket(bucket)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each backend in turn."""
    if request.param == "local":
        return LocalStorage(tmp_path / "blobs")
    return request.getfixturevalue("s3")


def test_save_open_exists_size_delete(storage: Any) -> None:
    data = b"hello blobs" * 100
    key = _sha(data)
    assert not storage.exists(key)
    storage.save(key, io.BytesIO(data))
    assert storage.exists(key)
    assert storage.size(key) == len(data)
    with storage.open(key) as blob:
        assert blob.read() == data
    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # a missing blob is not an error
    with pytest.raises(FileNotFoundError):
        storage.open(key)
    with pytest.raises(FileNotFoundError):
        storage.size(key)


def test_bad_keys_are_refused(storage: Any) -> None:
    for bad in ("../etc/passwd", "ABC", "a" * 63, "A" * 64):
        with pytest.raises(ValueError, match="sha256 hex digests"):
            storage.exists(bad)


def test_commit_temp_stores_and_removes_the_temp_file(storage: Any) -> None:
    data = os.urandom(50_000)
    tmp, tmp_path = storage.new_temp()
    with tmp:
        tmp.write(data)
    storage.commit_temp(_sha(data), tmp_path)
    assert not tmp_path.exists()
    with storage.open(_sha(data)) as blob:
        assert blob.read() == data


def test_commit_temp_syncs_every_folder_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rename is durable once its folder is synced; the folder made for the first blob under
    # a new prefix is durable once its own parent is: both, or a crash could lose the blob.
    storage = LocalStorage(tmp_path / "blobs")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    data = b"first blob under its prefix"
    tmp, temp_path = storage.new_temp()
    with tmp:
        tmp.write(data)
    synced.clear()  # the temp file's own fsync is new_temp's caller's
    storage.commit_temp(_sha(data), temp_path)
    blob = storage.local_path(_sha(data))
    assert set(synced) == {str(blob.parent), str(blob.parent.parent), str(storage.root)}

    same_prefix = _sha(data)[:4] + "0" * 60
    tmp, temp_path = storage.new_temp()
    with tmp:
        tmp.write(b"another")
    synced.clear()
    storage.commit_temp(same_prefix, temp_path)
    assert synced == [str(storage.local_path(same_prefix).parent)]  # nothing new made


def test_reader_seeks_like_a_file_so_zipfile_works(storage: Any) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(20):
            archive.writestr(f"page{number}.html", f"<p>{number}</p>" * 500)
    data = buffer.getvalue()
    storage.save(_sha(data), io.BytesIO(data))
    with storage.open(_sha(data)) as blob:
        assert blob.seekable()
        blob.seek(-10, io.SEEK_END)
        assert blob.read() == data[-10:]
        blob.seek(100)
        assert blob.read(50) == data[100:150]
        assert blob.tell() == 150
        archive = zipfile.ZipFile(blob)
        assert archive.read("page7.html") == b"<p>7</p>" * 500


def test_objects_lists_blobs_and_strays(storage: Any) -> None:
    blobs = [os.urandom(100) for _ in range(3)]
    for data in blobs:
        storage.save(_sha(data), io.BytesIO(data))
    found = list(storage.objects())
    assert {o.key for o in found if o.key} == {_sha(d) for d in blobs}
    assert all(o.size == 100 for o in found)


def test_s3_objects_pages_through_listings(s3: S3Storage) -> None:
    """ListObjectsV2 answers at most 1000 keys a page: every page is read."""
    for number in range(1005):
        data = str(number).encode()
        s3.client.put_object(Bucket=s3.bucket, Key=s3.object_name(_sha(data)), Body=data)
    s3.client.put_object(Bucket=s3.bucket, Key=s3.prefix + "stray.txt", Body=b"x")
    found = list(s3.objects())
    assert len([o for o in found if o.key]) == 1005
    strays = [o for o in found if o.key is None]
    assert [o.name for o in strays] == ["some/prefix/stray.txt"]
    s3.remove_stray(strays[0].name)
    assert not [o for o in s3.objects() if o.key is None]


def test_s3_keeps_an_existing_blob(s3: S3Storage) -> None:
    """Blobs are immutable: a second save of a key already stored uploads nothing."""
    data = b"first"
    key = _sha(data)
    s3.save(key, io.BytesIO(data))
    s3.save(key, io.BytesIO(b"other bytes"))
    tmp, tmp_path = s3.new_temp()
    with tmp:
        tmp.write(b"other bytes again")
    s3.commit_temp(key, tmp_path)
    with s3.open(key) as blob:
        assert blob.read() == data
    assert not tmp_path.exists()


def test_s3_layout_is_prefix_ab_cd_sha256(s3: S3Storage) -> None:
    data = b"layout"
    key = _sha(data)
    s3.save(key, io.BytesIO(data))
    names = [item["Key"] for item in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert names == [f"some/prefix/{key[:2]}/{key[2:4]}/{key}"]


def test_s3_read_range_streams_only_the_range(s3: S3Storage) -> None:
    data = os.urandom(3 << 20)
    key = _sha(data)
    s3.save(key, io.BytesIO(data))
    assert b"".join(s3.read_range(key, 1000, 2000)) == data[1000:2000]
    assert b"".join(s3.read_range(key, 0, len(data))) == data
    assert b"".join(s3.read_range(key, 5, 5)) == b""


def test_s3_big_object_is_streamed_not_read_whole(s3: S3Storage, tmp_path: Path) -> None:
    """A 40 MiB blob goes up in parts and comes back in chunks no larger than a read asks."""
    size = 40 << 20
    chunk = os.urandom(1 << 20)
    tmp, tmp_path = s3.new_temp()
    digest = hashlib.sha256()
    with tmp:
        for _ in range(size // len(chunk)):
            tmp.write(chunk)
            digest.update(chunk)
    key = digest.hexdigest()
    s3.commit_temp(key, tmp_path)
    assert s3.size(key) == size
    largest = 0
    check = hashlib.sha256()
    with s3.open(key) as blob:
        while part := blob.read(1 << 20):
            largest = max(largest, len(part))
            check.update(part)
        assert blob.raw.body is not None
        assert blob.raw.position == size
    assert check.hexdigest() == key
    assert largest <= 1 << 20
    pieces = list(s3.read_range(key, 0, size))
    assert max(len(p) for p in pieces) <= 1 << 20
    assert len(pieces) >= size // (1 << 20)


def test_s3_failed_upload_leaves_no_blob_and_the_temp_for_the_caller(
    s3: S3Storage, tmp_path: Path
) -> None:
    data = b"never stored"
    tmp, tmp_path = s3.new_temp()
    with tmp:
        tmp.write(data)
    gone = S3Storage(
        "no-such-bucket-here", "", tmp_dir=tmp_path.parent, endpoint_url=s3.endpoint_url
    )
    with pytest.raises(StorageUnavailable):
        gone.commit_temp(_sha(data), tmp_path)
    assert tmp_path.exists()  # the writer's `finally` removes it
    assert not s3.exists(_sha(data))


def test_s3_endpoint_down_raises_storage_unavailable(tmp_path: Path) -> None:
    down = S3Storage("bucket", "", tmp_dir=tmp_path, endpoint_url=f"http://127.0.0.1:{free_port()}")
    down.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StorageUnavailable, match="failed"):
        down.exists("a" * 64)
    assert down_check(down)["ok"] is False


def down_check(storage: S3Storage) -> dict[str, Any]:
    return storage.check_writable()


def test_presigned_url_downloads_with_the_filename(s3: S3Storage) -> None:
    data = b"presigned bytes"
    key = _sha(data)
    s3.save(key, io.BytesIO(data))
    url = s3.presigned_url(key, "demo-1.0-py3-none-any.whl", "application/octet-stream")
    assert "Expires=" in url or "X-Amz-Expires=" in url
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        assert response.read() == data
        disposition = response.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="demo-1.0-py3-none-any.whl"'


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://my-bucket/some/prefix/", ("s3", "my-bucket", "some/prefix")),
        ("s3://my-bucket", ("s3", "my-bucket", "")),
        ("file:///data/blobs", ("file", "/data/blobs", "")),
    ],
)
def test_parse_storage_url(url: str, expected: tuple[str, str, str]) -> None:
    assert parse_storage_url(url) == expected


def test_bad_storage_url_is_reported_with_the_other_bad_variables(tmp_path: Path) -> None:
    env = {
        "DATA_DIR": str(tmp_path),
        "STORAGE_URL": "s3://Bad_Bucket/x",
        "S3_REDIRECT": "maybe",
        "LOG_LEVEL": "loud",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "STORAGE_URL" in message
    assert "S3_REDIRECT" in message
    assert "LOG_LEVEL" in message
    with pytest.raises(ConfigError, match="S3_REDIRECT=true needs STORAGE_URL=s3"):
        Settings.from_env(
            {"DATA_DIR": str(tmp_path), "STORAGE_URL": "file:///x", "S3_REDIRECT": "1"}
        )
    with pytest.raises(ConfigError, match="ACCEL_REDIRECT_PREFIX is for disk storage"):
        Settings.from_env(
            {
                "DATA_DIR": str(tmp_path),
                "STORAGE_URL": "s3://bucket/x",
                "ACCEL_REDIRECT_PREFIX": "/_blobs",
            }
        )
    disk = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "STORAGE_URL": (tmp_path / "blobs").as_uri(),  # disk, also in the S3 test pass
            "ACCEL_REDIRECT_PREFIX": "_blobs/",
        }
    )
    assert disk.accel_redirect_prefix == "/_blobs"


def test_storage_url_picks_the_backend(tmp_path: Path) -> None:
    env = {
        "DATA_DIR": str(tmp_path),
        "STORAGE_URL": "s3://bucket/pre",
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    settings = Settings.from_env(env)
    storage = make_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.tmp_dir) == ("bucket", "pre/", settings.tmp_dir)
    local = make_storage(
        Settings.from_env({"DATA_DIR": str(tmp_path), "STORAGE_URL": f"file://{tmp_path}/b"})
    )
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path / "b"


# --- through the app ----------------------------------------------------------------------------


@pytest.fixture
def s3_app(moto: s3server.S3Server, tmp_path: Path) -> Iterator[Any]:
    """An app whose blobs live in a fresh bucket; `redirect` turns on S3_REDIRECT."""
    from dataclasses import replace

    from app import create_app
    from app.data.db import Database
    from app.ops.prepare import bootstrap, migrate

    bucket = moto.create_bucket(s3server.bucket_name(tmp_path / "app"))
    settings = Settings(
        data_dir=tmp_path / "data",
        admin_password=ADMIN_PASSWORD,
        mirror_url="http://127.0.0.1:9/simple/",
        upstream_retries=0,
        storage_url=f"s3://{bucket}/pfx",
        s3_endpoint_url=moto.endpoint_url,
    )
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    database = Database(settings.database_url)
    with database.session() as session:
        bootstrap(session, settings, out=open(os.devnull, "w"))  # noqa: SIM115
    database.engine.dispose()

    def build(redirect: bool = False) -> Any:
        app = create_app(replace(settings, s3_redirect=redirect))
        app.config["TESTING"] = True
        return app

    yield build
    moto.drop_bucket(bucket)


def _upload(client: Any, version: str, size_hint: int = 0) -> tuple[str, bytes]:
    """Upload an sdist of `demo` to admin/dev; return (filename, bytes)."""
    from tests.builders import make_sdist
    from tests.test_upload import upload

    filename, data = make_sdist("demo", version, description=os.urandom(size_hint).hex())
    headers = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
    response = upload(client, filename, data, headers=headers)
    assert response.status_code == 200, response.status
    return filename, data


def test_app_serves_s3_blobs_with_range_etag_and_304(s3_app: Any) -> None:
    client = s3_app().test_client()
    filename, data = _upload(client, "1.0", size_hint=300_000)
    key = _sha(data)
    url = f"/admin/dev/+f/{key}/{filename}"
    whole = client.get(url)
    assert whole.status_code == 200
    assert whole.data == data
    assert whole.headers["ETag"] == f'"{key}"'
    assert whole.headers["Content-Length"] == str(len(data))
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert "immutable" in whole.headers["Cache-Control"]
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.data == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206
    assert tail.data == data[-10:]
    unsatisfiable = client.get(url, headers={"Range": f"bytes={len(data) + 5}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    assert client.get(url, headers={"If-None-Match": f'"{key}"'}).status_code == 304
    head = client.head(url)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))


def test_app_redirects_to_a_presigned_url_after_the_access_check(s3_app: Any) -> None:
    filename, data = _upload(s3_app().test_client(), "2.0")
    client = s3_app(redirect=True).test_client()
    url = f"/admin/dev/+f/{_sha(data)}/{filename}"
    response = client.get(url)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(
        s3server.SERVER.endpoint_url if s3server.SERVER else "http://127.0.0.1:"
    )
    assert "no-store" in response.headers["Cache-Control"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(location, timeout=10) as fetched:
        assert fetched.read() == data
    assert client.get(f"/admin/dev/+f/{'0' * 64}/{filename}").status_code == 404


def unreachable(storage: S3Storage) -> S3Storage:
    """The same bucket behind an endpoint nobody listens on, tried once per call."""
    down = S3Storage(
        storage.bucket,
        "pfx",
        tmp_dir=storage.tmp_dir,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    down.client.meta.config.retries = {"max_attempts": 1}
    return down


def test_app_answers_503_when_the_s3_endpoint_is_down(s3_app: Any) -> None:
    app = s3_app()
    client = app.test_client()
    filename, data = _upload(client, "3.0")
    storage = app.extensions["pyshelf.storage"]
    app.extensions["pyshelf.storage"] = unreachable(storage)
    response = client.get(f"/admin/dev/+f/{_sha(data)}/{filename}")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert "blob store is unavailable" in response.status
    status = client.get("/+status")
    assert status.status_code == 503
    assert status.json["checks"]["blob_store"]["ok"] is False


def test_an_upload_while_the_s3_endpoint_is_down_is_503_and_leaves_no_temp_file(
    s3_app: Any,
) -> None:
    """Nothing recorded, nothing left in DATA_DIR/tmp: twine can simply retry later."""
    from tests.builders import make_sdist
    from tests.test_upload import upload

    app = s3_app()
    storage = app.extensions["pyshelf.storage"]
    app.extensions["pyshelf.storage"] = unreachable(storage)
    filename, data = make_sdist("demo", "4.0")
    headers = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
    result = upload(app.test_client(), filename, data, headers=headers)
    assert result.status_code == 503
    assert [p for p in storage.tmp_dir.rglob("*") if p.is_file()] == []
    from app.data.models import File
    from tests.test_upload import count_rows

    assert count_rows(app, File) == 0
