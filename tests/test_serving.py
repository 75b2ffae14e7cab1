"""Request body limits in the app, the settings behind them, and the worker's request reader."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RoutingException

from app.core.config import ConfigError, Settings
from app.http.request_reader import NeedsRoom, Refused, RequestReader, body_limit
from app.http.serving import BufferingWorker

NO_DOTENV = {"ENV_FILE": os.devnull}


def test_login_body_over_max_request_body_is_413_in_the_app_too(client: Any) -> None:
    """Under any WSGI server a 2 MiB login body is refused before it is read."""
    body = b'{"user": "admin", "password": "' + b"x" * (2 << 20) + b'"}'

    response = client.post("/+login", data=body, content_type="application/json")

    assert response.status == (
        f"413 Request body too large: {len(body)} bytes; this URL takes at most 1048576 "
        "(MAX_REQUEST_BODY)."
    )


def test_body_limit_is_max_upload_size_only_on_the_upload_urls(settings: Settings) -> None:
    """Uploads and doc uploads take files; every other URL takes MAX_REQUEST_BODY."""
    assert body_limit(settings, "upload.upload") == ((2 << 20) + (32 << 20), "MAX_UPLOAD_SIZE")
    assert body_limit(settings, "web.doc_upload") == ((2 << 20) + (32 << 20), "MAX_UPLOAD_SIZE")
    assert body_limit(settings, "web.login") == (1 << 20, "MAX_REQUEST_BODY")
    assert body_limit(settings, None) == (1 << 20, "MAX_REQUEST_BODY")


def test_upload_endpoints_name_routes_the_app_has(app: Any) -> None:
    """The worker and the app find upload URLs by endpoint: each name must be a real route."""
    routes = app.url_map.bind("localhost")

    assert routes.match("/admin/dev/", method="POST")[0] == "upload.upload"
    assert routes.match("/admin/dev/pkg/1.0/+doc-upload", method="POST")[0] == "web.doc_upload"


def test_request_settings_are_read_and_checked() -> None:
    """MAX_REQUEST_BODY takes a size, REQUEST_TIMEOUT seconds; nonsense is reported."""
    settings = Settings.from_env(
        {**NO_DOTENV, "MAX_REQUEST_BODY": "4M", "REQUEST_TIMEOUT": "90", "SCRIPT_NAME": "/pypi/"}
    )
    assert (settings.max_request_body_bytes, settings.request_timeout_seconds) == (4 << 20, 90)
    assert settings.script_name == "/pypi"

    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**NO_DOTENV, "MAX_REQUEST_BODY": "12", "REQUEST_TIMEOUT": "0.5"})
    assert "MAX_REQUEST_BODY='12': at least 1K" in str(caught.value)
    assert "REQUEST_TIMEOUT=0.5: at least 1 second" in str(caught.value)


def reader(tmp_path: Path, max_request_body: int = 1 << 20, target: str = "") -> RequestReader:
    """A request reader as the worker makes one, with a stand-in worker (routes `target`)."""
    settings = Settings(data_dir=tmp_path, max_request_body_bytes=max_request_body)
    endpoint = "upload.upload" if target == "/admin/dev/" else None
    worker = SimpleNamespace(settings=settings, limit_for=lambda *_: body_limit(settings, endpoint))
    return RequestReader(worker, 0.0)  # type: ignore[arg-type]


def feed_bytewise(request: RequestReader, data: bytes) -> bytes:
    """Feed `data` one byte at a time, as the slowest client would; return what follows."""
    for index in range(len(data)):
        rest = request.feed(data[index : index + 1])
        if rest is not None:
            return rest + data[index + 1 :]
    raise AssertionError("the request never completed")


def replay(request: RequestReader) -> bytes:
    """What gunicorn's parser reads back."""
    parts = []
    while chunk := request.inbox.recv(7):
        parts.append(chunk)
    return b"".join(parts)


CHUNKED = (
    b"POST /+login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nabcd\r\n1\r\ne\r\n0\r\nTrailer: t\r\n\r\n"
)
NEXT = b"GET /+status HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\nPOST /+login HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        CHUNKED,
    ],
)
def test_reader_ends_a_request_where_it_ends_and_keeps_what_follows(
    tmp_path: Path, request_bytes: bytes
) -> None:
    """Byte by byte or all at once, the request is replayed whole and the next one kept."""
    for feed in (feed_bytewise, lambda r, data: r.feed(data)):
        request = reader(tmp_path)

        rest = feed(request, request_bytes + NEXT)

        assert (replay(request), rest) == (request_bytes, NEXT)


def test_reader_keeps_a_large_body_in_a_temp_file(tmp_path: Path) -> None:
    """Past 64 KiB the body goes to an unlinked temp file; it reads back the same."""
    body = os.urandom(300 << 10)
    head = f"POST /admin/dev/ HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    request = reader(tmp_path, max_request_body=1024, target="/admin/dev/")

    assert request.feed(head + body) == b""

    assert request.inbox.file is not None
    assert replay(request) == head + body
    assert request.inbox.file is None  # closed once read, before the app answers
    assert list(tmp_path.joinpath("tmp").iterdir()) == []  # nothing named on disk


def test_reader_asks_for_room_before_a_body_the_disk_cannot_hold_then_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A declared body larger than the free disk stops the reader before any of it is written
    (the worker then evicts mirror files in a thread); fed again, it takes the pending bytes."""
    body = os.urandom(300 << 10)
    head = f"POST /admin/dev/ HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    request = reader(tmp_path, max_request_body=1024, target="/admin/dev/")
    free = SimpleNamespace(free=1000)
    monkeypatch.setattr("app.http.request_reader.shutil.disk_usage", lambda _path: free)

    with pytest.raises(NeedsRoom) as short:
        request.feed(head + body[:1000])

    assert short.value.needed_bytes == len(body)
    assert request.inbox.size == len(head)  # the head only: no body byte is on disk yet
    free.free = 1 << 30  # eviction made room
    assert request.feed(b"") is None
    assert request.feed(body[1000:]) == b""
    assert replay(request) == head + body


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (
            b"POST /+login HTTP/1.1\r\nContent-Length: 2000\r\n\r\n",
            413,
            "Request body too large: 2000 bytes; this URL takes at most 1024 (MAX_REQUEST_BODY).",
        ),
        (
            b"POST /+login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n",
            413,
            "Request body too large: more than 1024 bytes; this URL takes at most 1024 "
            "(MAX_REQUEST_BODY).",
        ),
        (  # chunk extensions are stored too: they count
            b"POST /+login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1;"
            + b"e" * 1000
            + b"\r\na\r\n"
            + b"1;"
            + b"e" * 1000
            + b"\r\n",
            413,
            "Request body too large: more than 1024 bytes; this URL takes at most 1024 "
            "(MAX_REQUEST_BODY).",
        ),
        (
            b"POST /+login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            "Bad chunked body: a chunk size is not hex.",
        ),
        (
            b"POST /+login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY",
            400,
            "Bad chunked body: a chunk does not end with CRLF.",
        ),
        (
            b"GET / HTTP/1.1\r\nCookie: " + b"c" * (70 << 10),
            431,
            "Request header fields too large: more than 65536 bytes.",
        ),
    ],
)
def test_reader_refuses_what_it_cannot_take(
    tmp_path: Path, request_bytes: bytes, status: int, reason: str
) -> None:
    """Too large, or not HTTP: refused with a reason before the rest is read."""
    request = reader(tmp_path, max_request_body=1024)

    with pytest.raises(Refused) as caught:
        request.feed(request_bytes)

    assert (caught.value.status, caught.value.reason) == (status, reason)


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n folded\r\n\r\n",
        b"NONSENSE\r\n\r\n",
    ],
)
def test_reader_hands_over_heads_whose_framing_gunicorn_refuses(
    tmp_path: Path, head: bytes
) -> None:
    """An ambiguous body length goes to gunicorn as the head alone: its 400, then a close."""
    request = reader(tmp_path)

    assert request.feed(head + b"hello") == b"hello"

    assert request.is_framed is False
    assert replay(request) == head


@pytest.mark.parametrize(
    ("method", "target", "setting"),
    [
        ("POST", "/pypi/admin/dev/", "MAX_UPLOAD_SIZE"),
        ("POST", "/pypi/admin/dev", "MAX_UPLOAD_SIZE"),
        ("POST", "http://pkgs.example/pypi/admin/dev/?x=1", "MAX_UPLOAD_SIZE"),
        ("POST", "/pypi/admin/dev/pkg/1.0/+doc-upload", "MAX_UPLOAD_SIZE"),
        ("POST", "/pypi/%61dmin/dev/", "MAX_UPLOAD_SIZE"),
        ("GET", "/pypi/admin/dev/", "MAX_REQUEST_BODY"),
        ("POST", "/admin/dev/", "MAX_REQUEST_BODY"),  # outside SCRIPT_NAME: not served at all
        ("POST", "/pypi/+login", "MAX_REQUEST_BODY"),
        ("PUT", "/pypi/admin/dev", "MAX_REQUEST_BODY"),
        ("POST", "/pypi/admin/dev/pkg/+simple/", "MAX_REQUEST_BODY"),
    ],
)
def test_worker_finds_the_upload_urls_as_the_app_routes_them(
    app: Any, method: str, target: str, setting: str
) -> None:
    """The worker routes a large body's target with the app's own URL map, below SCRIPT_NAME."""
    worker = BufferingWorker.__new__(BufferingWorker)  # no gunicorn arbiter needed for routing
    worker.settings = replace(app.config["PYSHELF_SETTINGS"], script_name="/pypi")
    worker.routes = app.url_map.bind("localhost")
    worker.no_route = (HTTPException, RoutingException)

    assert worker.limit_for(method, target)[1] == setting
