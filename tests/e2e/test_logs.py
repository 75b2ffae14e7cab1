"""The server's log as an operator reads it: a time on every line, one line per request with
status, bytes and duration, and pip's user-agent as pip/VERSION (whole in JSON lines)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 ")
# What pip 24 sends: its name and version, then what it knows about the machine.
PIP_AGENT = (
    'pip/24.0 {"ci":null,"cpu":"x86_64","distro":{"id":"bookworm","libc":{"lib":"glibc",'
    '"version":"2.36"},"name":"Debian GNU/Linux","version":"12"},"implementation":{"name":'
    '"CPython","version":"3.11.7"},"installer":{"name":"pip","version":"24.0"},"openssl_version"'
    ':"OpenSSL 3.0.11 19 Sep 2023","python":"3.11.7","rustc_version":"1.75.0","setuptools_version"'
    ':"69.0.3","system":{"name":"Linux","release":"6.1.0-17-amd64"}}'
)


def fetch_as_pip(server: LiveServer) -> int:
    """GET admin/dev's simple index with pip's whole user-agent: the bytes of the body."""
    status, _headers, body, _reason = server.get(
        "/admin/dev/+simple/", headers={"User-Agent": PIP_AGENT, "Accept": "text/html"}
    )
    assert status == 200
    return len(body)


def test_every_text_line_has_a_time_and_a_request_line_is_short(server_factory: object) -> None:
    """gunicorn's lines and the app's start with an ISO 8601 UTC time; the request's line has
    status, bytes and duration, and pip/24.0 instead of pip's machine JSON."""
    server = server_factory()  # type: ignore[operator]
    size = fetch_as_pip(server)
    server.stop()  # every line written, gunicorn's shutdown lines too

    lines = [line for line in server.log().splitlines() if line.strip()]
    assert [line for line in lines if not TIME_RE.match(line)] == []
    assert any("gunicorn.error: Listening at" in line for line in lines)
    [request] = [line for line in lines if "/admin/dev/+simple/" in line]
    assert re.search(
        rf' "GET /admin/dev/\+simple/ HTTP/1.1" 200 {size} \d+(\.\d)?ms "pip/24.0" rid=\w+$',
        request,
    ), request
    assert "distro" not in server.log()


def test_json_lines_keep_the_whole_user_agent(server_factory: object) -> None:
    """LOG_FORMAT=json: every line an object with its time; the request's has every field."""
    server = server_factory(LOG_FORMAT="json")  # type: ignore[operator]
    size = fetch_as_pip(server)
    server.stop()

    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert all(TIME_RE.match(entry["time"] + " ") for entry in entries)
    [request] = [e for e in entries if e.get("path") == "/admin/dev/+simple/"]
    assert request["user_agent"] == PIP_AGENT
    assert (request["status"], request["bytes"]) == (200, size)
    assert request["duration_ms"] >= 0
