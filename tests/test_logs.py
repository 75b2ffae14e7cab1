"""Text log lines: an ISO 8601 UTC time first, and the client's name and version only."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

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
