"""Helpers for web UI tests: logging in, uploading releases and docs, reading CSRF tokens."""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

from tests.builders import make_wheel, zip_bytes
from tests.conftest import ADMIN_PASSWORD, basic_auth

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}
ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client: Any, url: str = "/+login") -> str:
    """The CSRF token a page's form carries (the session cookie is kept by the client)."""
    page = client.get(url, headers=HTML)
    match = CSRF_RE.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {url}"
    return match.group(1)


def login(client: Any, username: str = "admin", password: str = ADMIN_PASSWORD, **form: str) -> Any:
    """Post the login form (CSRF must be off, or pass csrf_token=...)."""
    return client.post(
        "/+login", data={"username": username, "password": password, **form}, headers=HTML
    )


def upload_form(filename: str, content: bytes, name: str, version: str) -> dict[str, Any]:
    """A twine-style upload form."""
    return {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name,
        "version": version,
        "filetype": "bdist_wheel" if filename.endswith(".whl") else "sdist",
        "pyversion": "py3" if filename.endswith(".whl") else "source",
        "sha256_digest": hashlib.sha256(content).hexdigest(),
        "content": (io.BytesIO(content), filename),
    }


def upload(
    client: Any,
    name: str = "demo-pkg",
    version: str = "1.0.0",
    *,
    index: str = "admin/dev",
    headers: dict[str, str] | None = None,
    **wheel: Any,
) -> Any:
    """Upload a freshly built wheel; returns the response."""
    filename, data = make_wheel(name, version, **wheel)
    return client.post(
        f"/{index}/", data=upload_form(filename, data, name, version), headers=headers or ADMIN
    )


def docs_zip(members: dict[str, bytes] | None = None, **kwargs: Any) -> bytes:
    """A documentation zip; by default a small Sphinx-like site under html/."""
    if members is None:
        members = {
            "html/index.html": b"<!DOCTYPE html><title>Demo docs</title><h1>Demo docs</h1>",
            "html/_static/style.css": b"body { color: black; }",
            "html/api/index.html": b"<h1>API</h1>",
            "html/search.js": b"console.log('docs');",
        }
    return zip_bytes(members, **kwargs)


def doc_upload_form(name: str, version: str, data: bytes, filename: str = "docs.zip") -> dict:
    """The `:action=doc_upload` form devpi-client sends."""
    return {
        ":action": "doc_upload",
        "protocol_version": "1",
        "name": name,
        "version": version,
        "content": (io.BytesIO(data), filename),
    }
