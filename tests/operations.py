"""Helpers for the operations tests (backup, integrity, metrics, cache): apps, uploads, docs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from typing import Any

from app import create_app
from app.core.config import Settings
from app.data.db import Database
from app.ops.prepare import bootstrap, migrate
from tests.builders import make_wheel
from tests.fake_upstream import FakeUpstream

MIME_JSON = "application/vnd.pypi.simple.v1+json"


def sha256(data: bytes) -> str:
    """Lowercase hex sha256."""
    return hashlib.sha256(data).hexdigest()


def wheel_metadata(data: bytes) -> bytes:
    """A wheel's METADATA: what its PEP 658 sidecar is."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


def mirrored(settings: Settings, upstream: FakeUpstream, **changes: Any) -> Settings:
    """`settings` with root/pypi mirroring `upstream`, with short timeouts."""
    return dataclasses.replace(
        settings,
        mirror_url=upstream.url,
        upstream_connect_timeout_seconds=1,
        upstream_read_timeout_seconds=2,
        upstream_retries=0,
        **changes,
    )


def make_app(settings: Settings) -> Any:
    """Migrate, bootstrap and build an app for `settings` (as `prepare` + gunicorn would)."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    settings.blob_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    database = Database(settings.database_url)
    with database.session() as session, open(os.devnull, "w") as devnull:
        bootstrap(session, settings, out=devnull)
    database.engine.dispose()
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def upload(
    client: Any, auth: dict[str, str], filename: str, data: bytes, index: str = "admin/dev"
) -> Any:
    """POST a distribution as twine does; asserts 200."""
    is_wheel = filename.endswith(".whl")
    stem = filename.removesuffix(".tar.gz").removesuffix(".whl")
    name, version = stem.split("-")[:2]
    response = client.post(
        f"/{index}/",
        data={
            ":action": "file_upload",
            "protocol_version": "1",
            "metadata_version": "2.1",
            "name": name,
            "version": version,
            "filetype": "bdist_wheel" if is_wheel else "sdist",
            "pyversion": "py3" if is_wheel else "source",
            "sha256_digest": sha256(data),
            "content": (io.BytesIO(data), filename),
        },
        headers=auth,
        content_type="multipart/form-data",
    )
    response.close()  # the WSGI close(): what ends a request for the request log and metrics
    assert response.status_code == 200, response.status
    return response


def docs_zip(title: str = "Docs") -> bytes:
    """A documentation zip with an index.html."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", f"<html><body><h1>{title}</h1></body></html>")
    return buffer.getvalue()


def upload_docs(
    client: Any,
    auth: dict[str, str],
    name: str,
    version: str,
    data: bytes,
    index: str = "admin/dev",
) -> Any:
    """POST a documentation zip as devpi-client does; asserts 200."""
    response = client.post(
        f"/{index}/",
        data={
            ":action": "doc_upload",
            "name": name,
            "version": version,
            "content": (io.BytesIO(data), f"{name}-{version}.doc.zip"),
        },
        headers=auth,
        content_type="multipart/form-data",
    )
    response.close()  # the WSGI close(): what ends a request for the request log and metrics
    assert response.status_code == 200, response.status
    return response


def publish_upstream(
    upstream: FakeUpstream, name: str, version: str = "1.0.0", payload_bytes: int = 2000, **kw: Any
) -> tuple[str, bytes]:
    """A wheel with `payload_bytes` of random data on the fake upstream, with its sidecar."""
    files = {f"{name.replace('-', '_')}/payload.bin": os.urandom(payload_bytes)}
    filename, data = make_wheel(name, version, files=files, **kw)
    upstream.add_file(name, filename, data, metadata=wheel_metadata(data))
    return filename, data


def mirror_file_path(client: Any, project: str, filename: str, index: str = "root/pypi") -> str:
    """The local +f path a project page gives `filename`."""
    response = client.get(f"/{index}/+simple/{project}/", headers={"Accept": MIME_JSON})
    assert response.status_code == 200, response.status
    return next(f["url"] for f in response.get_json()["files"] if f["filename"] == filename)


def download(client: Any, path: str) -> bytes:
    """GET a file to the end (a mirror miss streams through the cache); asserts 200."""
    response = client.get(path)
    try:
        assert response.status_code == 200, response.status
        return b"".join(response.response)
    finally:
        response.close()
