"""Helpers for e2e tests: hand-built upload forms, JSON API calls, twine, the CLI, page readers."""

from __future__ import annotations

import hashlib
import html.parser
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.builders import write_dist
from tests.conftest import (
    ADMIN_PASSWORD,
    ROOT,
    LiveServer,
    basic_auth,
    clean_env,
    run_twine,
)

MIME_JSON = "application/vnd.pypi.simple.v1+json"
MIME_HTML = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html; charset=utf-8"
# The Accept headers real installers send on a project page (PEP 691).
ACCEPT_PIP = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
ACCEPT_UV = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
ACCEPT_POETRY = "application/vnd.pypi.simple.v1+json, */*;q=0.1"
ADMIN = ("admin", ADMIN_PASSWORD)
CLI_TIMEOUT_SECONDS = 60
# A server's workers index what requests queued for search once they are idle, a search
# indexes what is still queued first (docs/search.md): what a probe reads without a search
# (the database) may lag.
INDEXING_WAIT_SECONDS = 10


def settles_to(probe: Callable[[], Any], expected: Any) -> None:
    """Assert `probe()` returns `expected` within INDEXING_WAIT_SECONDS (polled every 0.1 s):
    for what may lag behind the requests that caused it (the search index read directly, a
    page cached by another worker)."""
    deadline = time.monotonic() + INDEXING_WAIT_SECONDS
    while (value := probe()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value == expected


def sha256(data: bytes) -> str:
    """Lowercase hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


# --- uploads -----------------------------------------------------------------------------------


def multipart(
    fields: Iterable[tuple[str, str]], filename: str, content: bytes
) -> tuple[bytes, str]:
    """A multipart/form-data body with text `fields` and the distribution as part `content`."""
    boundary = "pyshelf-e2e-" + secrets.token_hex(12)
    parts: list[bytes] = []
    for key, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    parts.append(
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="content"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload_fields(filename: str, content: bytes, **overrides: str) -> list[tuple[str, str]]:
    """The form fields twine sends for `filename`; `overrides` replace or add fields."""
    is_wheel = filename.endswith(".whl")
    stem = filename.removesuffix(".whl").removesuffix(".tar.gz")
    name, version = stem.split("-")[:2]
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name.replace("_", "-"),
        "version": version,
        "filetype": "bdist_wheel" if is_wheel else "sdist",
        "pyversion": stem.split("-")[2] if is_wheel else "source",
        "metadata_version": "2.1",
        "sha256_digest": sha256(content),
    }
    fields.update(overrides)
    return list(fields.items())


def raw_upload(
    server: LiveServer,
    index: str,
    filename: str,
    content: bytes,
    *,
    auth: tuple[str, str] | None = ADMIN,
    **overrides: str,
) -> tuple[int, dict[str, str], bytes, str]:
    """POST one file to /INDEX/ with a form like twine's: (status, headers, body, reason)."""
    body, content_type = multipart(upload_fields(filename, content, **overrides), filename, content)
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = basic_auth(*auth)
    return server.get(f"/{index}/", headers=headers, method="POST", data=body)


def twine_upload(
    server: LiveServer,
    index: str,
    paths: Iterable[Path],
    *,
    user: str = "admin",
    password: str = ADMIN_PASSWORD,
    slash: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`twine upload --repository-url http://127.0.0.1:PORT/INDEX/ -u USER -p PASSWORD FILES`."""
    url = f"{server.url}/{index}" + ("/" if slash else "")
    return run_twine(
        "upload", "--repository-url", url, "-u", user, "-p", password, *map(str, paths)
    )


def publish(
    server: LiveServer,
    index: str,
    directory: Path,
    *dists: tuple[str, bytes],
    user: str = "admin",
    password: str = ADMIN_PASSWORD,
) -> list[Path]:
    """Write `dists` into `directory` and twine-upload them; fail showing twine's output."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [write_dist(directory, filename, data) for filename, data in dists]
    result = twine_upload(server, index, paths, user=user, password=password)
    assert result.returncode == 0, result.stdout + result.stderr
    return paths


# --- the JSON API and the CLI ------------------------------------------------------------------


def api(
    server: LiveServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    auth: tuple[str, str] | None = ADMIN,
) -> tuple[int, Any, str]:
    """A JSON API call: (status, decoded JSON body or None, reason)."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth is not None:
        headers["Authorization"] = basic_auth(*auth)
    status, _headers, raw, reason = server.get(path, headers=headers, method=method, data=data)
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = None
    return status, decoded, reason


def cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `./entrypoint.sh ARGS` against `data_dir`, as an admin would next to the server."""
    return subprocess.run(
        [str(ROOT / "entrypoint.sh"), *args],
        cwd=ROOT,
        env=clean_env(DATA_DIR=str(data_dir), PYSHELF_PYTHON=sys.executable, **env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


# --- reading simple pages ----------------------------------------------------------------------


def simple_json(server: LiveServer, index: str, project: str) -> dict[str, Any]:
    """The PEP 691 JSON project page; asserts it is a 200."""
    status, headers, body, reason = server.get(
        f"/{index}/+simple/{project}/", headers={"Accept": MIME_JSON}
    )
    assert (status, reason) == (200, "OK"), body
    assert headers["Content-Type"] == MIME_JSON
    return json.loads(body)


def hosted_files(server: LiveServer, index: str, project: str) -> dict[str, str]:
    """filename -> sha256 of every file the project page lists."""
    return {
        f["filename"]: f["hashes"]["sha256"] for f in simple_json(server, index, project)["files"]
    }


def file_url(server: LiveServer, index: str, project: str, filename: str) -> str:
    """The path (below the server URL) of a file, taken from the JSON page, never guessed."""
    for entry in simple_json(server, index, project)["files"]:
        if entry["filename"] == filename:
            return urlsplit(entry["url"]).path
    raise AssertionError(f"{filename} is not on /{index}/+simple/{project}/")


class Anchor:
    """One `<a>` of a simple HTML page."""

    def __init__(self, attrs: dict[str, str | None]) -> None:
        self.attrs = attrs
        self.text = ""

    @property
    def href(self) -> str:
        return self.attrs.get("href") or ""

    @property
    def filename_in_href(self) -> str:
        """The percent-decoded last path segment of the href (what pip and uv read, PEP 503)."""
        return unquote(urlsplit(self.href).path.rsplit("/", 1)[-1])


class AnchorParser(html.parser.HTMLParser):
    """Collects anchors with their (unescaped) attributes and text, as pip's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[Anchor] = []
        self._open: Anchor | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = Anchor(dict(attrs))
            self.anchors.append(self._open)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.text += data


def anchors(page: bytes) -> list[Anchor]:
    """The anchors of an HTML page."""
    parser = AnchorParser()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return parser.anchors


def line_of(page: bytes, filename: str) -> str:
    """The one line of an HTML project page whose anchor text is `filename`."""
    lines = [line for line in page.decode().splitlines() if f">{filename}</a>" in line]
    assert len(lines) == 1, page.decode()
    return lines[0]
