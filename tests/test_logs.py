"""Text log lines: an ISO 8601 UTC time first, and the client's name and version only."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from app.core import logs
from app.core.logs import TextFormatter, short_user_agent
from tests.e2e.test_logs import PIP_AGENT


@pytest.mark.parametrize(
    ("agent", "short"),
    [
        (PIP_AGENT, "pip/24.0"),
        ('uv/0.4.0 {"installer":{"name":"uv","version":"0.4.0"}}', "uv/0.4.0"),
        ("twine/5.0.0 CPython/3.11.7", "twine/5.0.0"),
        ("devpi-client/7.0.0 (py3.11.7; linux)", "devpi-client/7.0.0"),
        ("curl/8.5.0", "curl/8.5.0"),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "Firefox/128.0"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
            "Chrome/120.0.0.0",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
            "Edg/120.0.0.0",
        ),
        ("Mozilla/5.0", "Mozilla/5.0"),
        ("", "-"),
        ('"quoted" x\n[pyshelf] ERROR forged', "-"),
        ("a" * 500, "a" * 64),
    ],
)
def test_text_lines_name_the_client_by_its_first_product(agent: str, short: str) -> None:
    """pip's 700 characters of machine JSON shrink to pip/24.0; nothing forges a line."""
    assert short_user_agent(agent) == short


def test_text_lines_start_with_an_iso_8601_utc_time() -> None:
    """The record's own time, in UTC, to the millisecond."""
    record = logging.LogRecord("pyshelf", logging.INFO, __file__, 1, "hello", (), None)
    record.created = dt.datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC).timestamp()

    line = TextFormatter().format(record)

    assert line == "2026-01-02T03:04:05.678+00:00 [pyshelf] INFO pyshelf: hello"


class _Clock:
    """time.perf_counter for app.core.logs, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def test_the_request_duration_ends_with_the_body_not_with_work_done_at_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Search indexing runs in the response's close(), after the client has the body: an
    # upload's logged duration and its request metrics must not include it.
    clock = _Clock()
    monkeypatch.setattr(logs, "time", clock)

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            clock.now += 0.25  # building and sending the body
            yield b"answer"

        def close(self) -> None:
            clock.now += 30.0  # work after the response

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Length", "6")])
        return Body()

    seen: list[logs.Finished] = []
    middleware = logs.RequestLog(app, access_log=False)
    middleware.observers.append(seen.append)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/"}
    body = middleware(environ, lambda status, headers, *exc: None)
    assert b"".join(body) == b"answer"
    body.close()  # type: ignore[attr-defined]
    assert [f.bytes_sent for f in seen] == [6]
    assert seen[0].seconds == pytest.approx(0.25)


def test_a_body_closed_before_its_end_is_timed_to_the_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(logs, "time", clock)

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"part"
        yield b"never read"

    seen: list[logs.Finished] = []
    middleware = logs.RequestLog(app, access_log=False)
    middleware.observers.append(seen.append)
    body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
    assert next(iter(body)) == b"part"
    clock.now += 2.0  # the client went away; the server closes the body later
    body.close()  # type: ignore[attr-defined]
    assert seen[0].seconds == pytest.approx(2.0)
