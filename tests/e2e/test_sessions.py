"""Web sessions on a live server: logging out ends the session on the server, so a cookie copied
before stops working, and a session ends SESSION_LIFETIME after login (issue #15 item 8)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import urlencode

import pytest

from tests.conftest import ADMIN_PASSWORD, LiveServer

pytestmark = pytest.mark.e2e

HTML = {"Accept": "text/html"}
EXPIRY_WAIT_SECONDS = 60
CSRF_RE = re.compile(rb'name="csrf_token" value="([^"]+)"')


def _cookie(headers: dict[str, str]) -> str:
    """The `session=...` pair of a response's Set-Cookie."""
    return headers["Set-Cookie"].split(";")[0]


def _post_form(server: LiveServer, path: str, cookie: str, fields: dict[str, str]) -> tuple:
    return server.get(
        path,
        headers={
            **HTML,
            "Cookie": cookie,
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
        data=urlencode(fields).encode(),
    )


def log_in(server: LiveServer) -> tuple[str, dict[str, str]]:
    """Log in as admin through the form: the session cookie, and the login's headers."""
    status, headers, page, _ = server.get("/+login", headers=HTML)
    assert status == 200
    token = CSRF_RE.search(page).group(1).decode()
    status, headers, _body, _ = _post_form(
        server,
        "/+login",
        _cookie(headers),
        {"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token},
    )
    assert status == 303, headers
    return _cookie(headers), headers


def logout_form(server: LiveServer, cookie: str) -> tuple[str, str]:
    """The account page's CSRF token, and the cookie that carries it (a new one, if the page
    set one)."""
    status, headers, page, _ = server.get("/+account", headers={**HTML, "Cookie": cookie})
    assert status == 200
    return CSRF_RE.search(page).group(1).decode(), _cookie(
        headers
    ) if "Set-Cookie" in headers else cookie


def account_status(server: LiveServer, cookie: str) -> int:
    """200 when the cookie is logged in; 302 (to the login page) when not."""
    return server.get("/+account", headers={**HTML, "Cookie": cookie})[0]


def test_a_cookie_copied_before_logout_stops_working(live_server: LiveServer) -> None:
    """Someone who copied the cookie (a shared machine, a stolen backup) is logged out too."""
    copied, _headers = log_in(live_server)
    token, cookie = logout_form(live_server, copied)

    status, headers, _body, _ = _post_form(live_server, "/+logout", cookie, {"csrf_token": token})

    assert status == 303
    assert account_status(live_server, copied) == 302
    assert account_status(live_server, cookie) == 302
    status, headers, _body, _ = live_server.get("/+account", headers={**HTML, "Cookie": copied})
    assert headers["Location"].startswith("/+login?next=")


def test_another_login_is_not_ended_by_a_logout(live_server: LiveServer) -> None:
    """Logging out ends that session only: the same user's other browser stays logged in."""
    first, _ = log_in(live_server)
    second, _ = log_in(live_server)
    token, first = logout_form(live_server, first)

    assert _post_form(live_server, "/+logout", first, {"csrf_token": token})[0] == 303

    assert account_status(live_server, first) == 302
    assert account_status(live_server, second) == 200


def test_a_session_ends_session_lifetime_after_login(
    server_factory: Callable[..., LiveServer],
) -> None:
    """SESSION_LIFETIME=4s: the cookie says when it expires, and the server refuses it after."""
    server = server_factory(SESSION_LIFETIME="4s")
    cookie, headers = log_in(server)
    assert "Expires=" in headers["Set-Cookie"]  # a permanent cookie, gone with the session
    assert account_status(server, cookie) == 200

    deadline = time.monotonic() + EXPIRY_WAIT_SECONDS
    while account_status(server, cookie) == 200 and time.monotonic() < deadline:
        time.sleep(0.5)

    assert account_status(server, cookie) == 302
