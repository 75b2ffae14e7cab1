"""Documentation zips: upload (version page form and `:action=doc_upload`), checks that refuse
bad zips, and serving with a sandboxing CSP."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest

from app.http.web.docs import DOC_CSP
from tests.builders import zip_bytes
from tests.conftest import basic_auth
from tests.web.helpers import ADMIN, HTML, doc_upload_form, docs_zip, login, upload


@pytest.fixture
def demo(client: Any) -> None:
    """demo-pkg 1.0 and 2.0 on admin/dev."""
    assert upload(client, "demo-pkg", "1.0").status_code == 200
    assert upload(client, "demo-pkg", "2.0").status_code == 200


def api_upload(client: Any, data: bytes, version: str = "1.0", name: str = "demo-pkg") -> Any:
    """`:action=doc_upload` as devpi-client sends it."""
    return client.post("/admin/dev/", data=doc_upload_form(name, version, data), headers=ADMIN)


def test_docs_uploaded_with_the_version_page_form_are_served(client: Any, demo: None) -> None:
    login(client)
    page = client.get("/admin/dev/demo-pkg/1.0/", headers=HTML).get_data(as_text=True)
    assert 'id="doc-upload-form"' in page
    assert 'name="content"' in page

    response = client.post(
        "/admin/dev/demo-pkg/1.0/+doc-upload",
        data={"content": (io.BytesIO(docs_zip()), "demo-1.0.doc.zip")},
    )
    served = client.get("/admin/dev/demo-pkg/1.0/+doc/")

    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/dev/demo-pkg/1.0/"
    assert served.status == "200 OK"
    assert b"<h1>Demo docs</h1>" in served.data  # html/ was stripped: index.html at the top
    assert served.mimetype == "text/html"
    page = client.get("/admin/dev/demo-pkg/1.0/", headers=HTML).get_data(as_text=True)
    assert 'id="docs-link"' in page


def test_doc_upload_action_stores_docs_as_devpi_client_sends_them(client: Any, demo: None) -> None:
    response = api_upload(client, docs_zip(), version="2.0")

    assert response.status == "200 OK"
    served = client.get("/admin/dev/demo-pkg/2.0/+doc/api/")
    assert served.data == b"<h1>API</h1>"


def test_every_doc_response_is_sandboxed_and_not_sniffed(client: Any, demo: None) -> None:
    api_upload(client, docs_zip())

    for path in ("", "index.html", "_static/style.css", "search.js"):
        response = client.get(f"/admin/dev/demo-pkg/1.0/+doc/{path}")
        assert response.status_code == 200, path
        assert response.headers["Content-Security-Policy"] == DOC_CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "allow-same-origin" not in DOC_CSP
    assert DOC_CSP.startswith("sandbox ")
    css = client.get("/admin/dev/demo-pkg/1.0/+doc/_static/style.css")
    assert css.mimetype == "text/css"
    js = client.get("/admin/dev/demo-pkg/1.0/+doc/search.js")
    assert js.mimetype == "text/javascript"


def test_docs_need_no_session_and_set_no_cookie(client: Any, demo: None) -> None:
    api_upload(client, docs_zip())
    login(client)

    response = client.get("/admin/dev/demo-pkg/1.0/+doc/")

    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


def test_doc_urls_without_slash_redirect_so_relative_links_work(client: Any, demo: None) -> None:
    api_upload(client, docs_zip())

    root = client.get("/admin/dev/demo-pkg/1.0/+doc")
    folder = client.get("/admin/dev/demo-pkg/1.0/+doc/api")

    assert root.status_code == 301
    assert root.headers["Location"] == "/admin/dev/demo-pkg/1.0/+doc/"
    assert folder.status_code == 301
    assert folder.headers["Location"] == "/admin/dev/demo-pkg/1.0/+doc/api/"


def test_latest_serves_the_highest_version_with_docs(client: Any, demo: None) -> None:
    api_upload(client, docs_zip({"index.html": b"one"}), version="1.0")
    api_upload(client, docs_zip({"index.html": b"two"}), version="2.0")

    response = client.get("/admin/dev/demo-pkg/latest/+doc/")

    assert response.data == b"two"
    page = client.get("/admin/dev/demo-pkg/", headers=HTML).get_data(as_text=True)
    assert 'href="/admin/dev/demo-pkg/latest/+doc/"' in page


def test_a_reupload_replaces_the_docs_and_their_etag(client: Any, demo: None) -> None:
    api_upload(client, docs_zip({"index.html": b"old"}))
    first = client.get("/admin/dev/demo-pkg/1.0/+doc/")
    cached = client.get(
        "/admin/dev/demo-pkg/1.0/+doc/", headers={"If-None-Match": first.headers["ETag"]}
    )
    api_upload(client, docs_zip({"index.html": b"new"}))
    second = client.get("/admin/dev/demo-pkg/1.0/+doc/")

    assert cached.status_code == 304
    assert cached.headers["Content-Security-Policy"] == DOC_CSP
    assert second.data == b"new"
    assert second.headers["ETag"] != first.headers["ETag"]


@pytest.mark.parametrize(
    "path", ["../../../etc/passwd", "%2e%2e/%2e%2e/secret", "nope.html", "api/../../x"]
)
def test_paths_outside_the_docs_are_404(client: Any, demo: None, path: str) -> None:
    api_upload(client, docs_zip())

    response = client.get(f"/admin/dev/demo-pkg/1.0/+doc/{path}")

    assert response.status_code == 404


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"index.html": b"ok", "../evil.html": b"x"}, "points outside the zip (..)"),
        ({"index.html": b"ok", "a/../../evil.html": b"x"}, "points outside the zip (..)"),
        ({"index.html": b"ok", "/etc/evil": b"x"}, "has an absolute path"),
        ({"index.html": b"ok", "C:\\evil": b"x"}, "has an absolute path"),
        ({"readme.txt": b"no html"}, "no index.html at its top"),
        ({"a/index.html": b"x", "b/other.html": b"y"}, "no index.html at its top"),
    ],
)
def test_bad_zips_are_refused_with_400(
    client: Any, demo: None, members: dict[str, bytes], reason: str
) -> None:
    response = api_upload(client, zip_bytes(members))

    assert response.status_code == 400
    assert reason in response.status


def test_a_zip_bomb_is_refused(app: Any, client: Any, demo: None) -> None:
    settings = app.config["PYSHELF_SETTINGS"]
    app.config["PYSHELF_SETTINGS"] = dataclasses.replace(settings, docs_max_bytes=1 << 20)
    bomb = docs_zip({"index.html": b"x", "zeros.bin": bytes(8 << 20)})  # 8 MiB of zeros
    assert len(bomb) < 100_000

    response = api_upload(client, bomb)

    assert response.status == (
        "400 Documentation zip unpacks to more than 1048576 bytes (DOCS_MAX_SIZE)."
    )


def test_a_zip_with_too_many_members_is_refused(app: Any, client: Any, demo: None) -> None:
    settings = app.config["PYSHELF_SETTINGS"]
    app.config["PYSHELF_SETTINGS"] = dataclasses.replace(settings, docs_max_files=10)
    members = {"index.html": b"x", **{f"page{i}.html": b"p" for i in range(10)}}

    response = api_upload(client, zip_bytes(members))

    assert response.status == (
        "400 Documentation zip has 11 members; the limit is 10 (DOCS_MAX_FILES)."
    )


def test_something_that_is_not_a_zip_is_refused(client: Any, demo: None) -> None:
    response = api_upload(client, b"<html>not a zip</html>")

    assert response.status_code == 400
    assert "not a readable zip file" in response.status


def test_docs_need_an_existing_project_on_the_index(client: Any, demo: None) -> None:
    response = api_upload(client, docs_zip(), name="no-such-project")

    assert response.status == (
        "400 Project no-such-project does not exist on index admin/dev: upload a release first."
    )


def test_docs_need_upload_rights(client: Any, demo: None) -> None:
    client.put("/bob", json={"password": "bob-password"}, headers=ADMIN)
    bob = {"Authorization": basic_auth("bob", "bob-password")}

    by_api = client.post(
        "/admin/dev/", data=doc_upload_form("demo-pkg", "1.0", docs_zip()), headers=bob
    )
    login(client, "bob", "bob-password")
    page = client.get("/admin/dev/demo-pkg/1.0/", headers=HTML).get_data(as_text=True)
    by_form = client.post(
        "/admin/dev/demo-pkg/1.0/+doc-upload",
        data={"content": (io.BytesIO(docs_zip()), "docs.zip")},
    )

    assert by_api.status == "403 The user 'bob' isn't allowed to upload to index 'admin/dev'."
    assert 'id="doc-upload-form"' not in page
    assert by_form.status_code == 403


def test_docs_of_a_base_index_are_served_through_its_users(client: Any, demo: None) -> None:
    client.put("/admin/team", json={"bases": ["admin/dev"]}, headers=ADMIN)
    api_upload(client, docs_zip({"index.html": b"from dev"}))

    response = client.get("/admin/team/demo-pkg/1.0/+doc/")

    assert response.data == b"from dev"


def test_missing_docs_are_404(client: Any, demo: None) -> None:
    response = client.get("/admin/dev/demo-pkg/1.0/+doc/")

    assert response.status == "404 No documentation for demo-pkg 1.0 on admin/dev."


def test_docs_limits_come_from_the_environment() -> None:
    from app.core.config import ConfigError, Settings

    settings = Settings.from_env(
        {"ENV_FILE": "/dev/null", "DOCS_MAX_SIZE": "10M", "DOCS_MAX_FILES": "50"}
    )

    assert settings.docs_max_bytes == 10 << 20
    assert settings.docs_max_files == 50
    with pytest.raises(ConfigError, match="DOCS_MAX_SIZE"):
        Settings.from_env({"ENV_FILE": "/dev/null", "DOCS_MAX_SIZE": "lots"})
