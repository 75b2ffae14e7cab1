"""Cases that the long runs of `make test-robustness` found, kept as plain tests."""

from __future__ import annotations

import io
import zipfile
from typing import Any

from app.data.models import DocSet, File
from tests.builders import make_wheel
from tests.test_upload import count_rows, upload_form


def _wheel_needing_zip_version(version: int) -> tuple[str, bytes]:
    """demo-pkg's wheel, rewritten so that every member claims it needs zip `version`."""
    filename, data = make_wheel("demo-pkg", "1.0.0")
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            info.extract_version = version
            target.writestr(info, source.read(info))
    return filename, buffer.getvalue()


def test_a_wheel_that_needs_a_newer_zip_version_is_a_400_not_a_500(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    """zipfile raises NotImplementedError ("zip file version 8.4"), not BadZipFile."""
    filename, data = _wheel_needing_zip_version(84)
    response = client.post("/admin/dev/", data=upload_form(filename, data), headers=admin_auth)
    assert response.status_code == 400, response.status
    assert "zip file version 8.4" in response.status
    assert count_rows(app, File) == 0


def test_a_doc_zip_that_needs_a_newer_zip_version_is_a_400_not_a_500(
    app: Any, client: Any, admin_auth: dict[str, str]
) -> None:
    filename, data = make_wheel("demo-pkg", "1.0.0")
    form = upload_form(filename, data)
    assert client.post("/admin/dev/", data=form, headers=admin_auth).status_code == 200
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("index.html")
        info.extract_version = 235  # zipfile reads it back as "zip file version 23.5"
        archive.writestr(info, b"<h1>docs</h1>")
    form = {
        ":action": "doc_upload",
        "name": "demo-pkg",
        "version": "1.0.0",
        "content": (io.BytesIO(buffer.getvalue()), "docs.zip"),
    }
    response = client.post("/admin/dev/", data=form, headers=admin_auth)
    assert response.status_code == 400, response.status
    assert "zip file version 23.5" in response.status
    assert count_rows(app, DocSet) == 0
