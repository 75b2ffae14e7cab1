"""Login, logout, session cookies, CSRF protection and login throttling (form and HTTP Basic)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from sqlalchemy import select

from app import create_app
from app.data.models import LoginFailure, utcnow
from app.http.auth import SESSION_ID_KEY
from app.services import throttle
from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.web.helpers import ADMIN, HTML, csrf_token, login


def set_cookie(response: Any) -> str:
    """The Set-Cookie header of the session cookie."""
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies, "no session cookie was set"
    return cookies[0]


def test_login_goes_back_to_next_with_an_httponly_samesite_cookie(client: Any) -> None:
    response = login(client, next="/admin/dev/?page=1")

    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/dev/?page=1"
    cookie = set_cookie(response)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    page = client.get("/", headers=HTML).get_data(as_text=True)
    assert 'id="account-link"' in page
    assert 'id="logout"' in page


def test_session_cookie_is_secure_over_https(client: Any) -> None:
    response = client.post(
        "/+login",
        data={"username": "admin", "password": ADMIN_PASSWORD},
        base_url="https://pkgs.example",
    )

    assert response.status_code == 303
    assert "Secure" in set_cookie(response)


def test_login_link_carries_the_current_page(client: Any) -> None:
    page = client.get("/admin/dev/?page=2", headers=HTML).get_data(as_text=True)

    assert 'href="/+login?next=/admin/dev/?page%3D2"' in page


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"]
)
def test_login_never_redirects_to_another_site(client: Any, target: str) -> None:
    response = login(client, next=target)

    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_wrong_password_shows_an_error_and_logs_nobody_in(client: Any) -> None:
    response = login(client, password="not-the-password")

    assert response.status_code == 200
    assert 'id="login-error"' in response.get_data(as_text=True)
    assert "Invalid username or password." in response.get_data(as_text=True)
    assert client.get("/+account", headers=HTML).status_code == 302  # still anonymous


def test_unknown_user_gets_the_same_answer_as_a_wrong_password(client: Any) -> None:
    unknown = login(client, username="nobody", password="whatever-pw")
    wrong = login(client, username="admin", password="whatever-pw")

    assert unknown.status_code == wrong.status_code == 200
    # The CSRF token carries a timestamp: two logins a second apart differ there only.
    assert without_csrf_token(unknown.get_data()) == without_csrf_token(
        wrong.get_data().replace(b'value="admin"', b'value="nobody"')
    )


def without_csrf_token(page: bytes) -> bytes:
    return re.sub(rb'name="csrf_token" value="[^"]*"', b'name="csrf_token" value=""', page)


def test_failed_logins_lock_the_account_with_429_and_retry_after(client: Any) -> None:
    for _ in range(throttle.MAX_FAILURES["user"]):
        assert login(client, password="wrong-password").status_code == 200

    locked = login(client)  # even the right password, while locked

    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == str(throttle.FIRST_LOCK_SECONDS)
    assert "Try again in 60 seconds." in locked.get_data(as_text=True)
    assert client.get("/+account", headers=HTML).status_code == 302


def test_unknown_usernames_are_throttled_like_real_ones(client: Any) -> None:
    for _ in range(throttle.MAX_FAILURES["user"]):
        login(client, username="ghost", password="wrong-password")

    assert login(client, username="ghost", password="wrong-password").status_code == 429


def test_lockout_is_shared_by_app_instances_on_one_database(app: Any) -> None:
    """Two apps (as two gunicorn workers) on one database see the same failures."""
    other = create_app(app.config["PYSHELF_SETTINGS"])
    other.config.update(TESTING=True, WTF_CSRF_ENABLED=False)
    first, second = app.test_client(), other.test_client()

    for attempt in range(throttle.MAX_FAILURES["user"]):
        client = first if attempt % 2 else second
        assert login(client, password="wrong-password").status_code == 200

    assert login(first).status_code == 429
    assert login(second).status_code == 429


def test_lock_grows_with_more_failures_and_ends_in_time(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [utcnow()]
    monkeypatch.setattr("app.data.models.utcnow", lambda: now[0])
    for _ in range(throttle.MAX_FAILURES["user"]):
        login(client, password="wrong-password")
    now[0] += dt.timedelta(seconds=61)  # the first lock (60 s) is over
    assert login(client, password="wrong-password").status_code == 200  # 6th failure

    locked = login(client)
    now[0] += dt.timedelta(seconds=121)  # the second lock is twice as long
    unlocked = login(client)

    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "120"
    assert unlocked.status_code == 303


def test_success_clears_the_failures_of_the_account_from_its_address(app: Any, client: Any) -> None:
    for _ in range(throttle.MAX_FAILURES["user"] - 1):
        login(client, password="wrong-password")

    assert login(client).status_code == 303
    with app.extensions["pyshelf.db"].session() as session:
        keys = set(session.scalars(select(LoginFailure.key)))
    assert "user:127.0.0.1/admin" not in keys
    assert "addr:127.0.0.1" in keys  # the address keeps counting


def test_one_address_guessing_many_accounts_is_locked_out(client: Any) -> None:
    for number in range(throttle.MAX_FAILURES["addr"]):
        login(client, username=f"user{number}", password="wrong-password")

    assert login(client).status_code == 429


def test_wrong_basic_passwords_are_throttled_too(client: Any) -> None:
    wrong = {"Authorization": basic_auth("admin", "wrong-password")}
    for _ in range(throttle.MAX_FAILURES["user"]):
        assert client.patch("/admin", json={}, headers=wrong).status_code == 403

    response = client.patch("/admin", json={}, headers=ADMIN)

    assert response.status == (
        "429 Too many failed logins for this account or address; retry in 60 s."
    )
    assert response.headers["Retry-After"] == "60"


def test_tokens_keep_working_while_the_password_is_locked(client: Any) -> None:
    token = client.post("/admin/+tokens", json={}, headers=ADMIN).json["result"]["token"]
    wrong = {"Authorization": basic_auth("admin", "wrong-password")}
    for _ in range(throttle.MAX_FAILURES["user"]):
        client.patch("/admin", json={}, headers=wrong)

    response = client.patch(
        "/admin", json={}, headers={"Authorization": basic_auth("__token__", token)}
    )

    assert response.status_code == 200


def test_json_login_answers_a_devpi_token_without_csrf_or_cookie(app: Any, client: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True

    response = client.post("/+login", json={"user": "admin", "password": ADMIN_PASSWORD})

    assert response.status == "200 OK"
    assert response.json["type"] == "proxyauth"  # the protocol: tests/test_devpi.py
    assert "Set-Cookie" not in response.headers


# --- CSRF ------------------------------------------------------------------------------------


def test_login_form_without_csrf_token_is_refused(app: Any, client: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True

    response = login(client)

    assert response.status == "400 Bad Request: The CSRF token is missing."


def test_login_form_with_its_csrf_token_works(app: Any, client: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    token = csrf_token(client, "/+login")

    response = login(client, csrf_token=token)

    assert response.status_code == 303


def test_logout_is_a_post_with_csrf_token(app: Any, client: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    login(client, csrf_token=csrf_token(client, "/+login"))

    assert client.get("/+logout").status_code == 404  # no GET logout (/+logout is no user)
    assert client.post("/+logout").status_code == 400  # no token: still logged in
    assert client.get("/+account", headers=HTML).status_code == 200
    response = client.post("/+logout", data={"csrf_token": csrf_token(client, "/+account")})

    assert response.status_code == 303
    assert client.get("/+account", headers=HTML).status_code == 302


def test_json_api_cannot_be_driven_by_the_session_cookie_without_csrf_token(
    app: Any, client: Any
) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    login(client, csrf_token=csrf_token(client, "/+login"))

    by_cookie = client.patch("/admin/dev", json={"title": "hijacked"})
    by_header = client.patch("/admin/dev", json={"title": "mine"}, headers=ADMIN)

    assert by_cookie.status == "400 Bad Request: The CSRF token is missing."
    assert by_header.status_code == 200
    assert (
        client.get("/admin/dev", headers={"Accept": "application/json"}).json["result"]["title"]
        == "mine"
    )


def test_scripts_without_cookies_need_no_csrf_token(app: Any, client: Any) -> None:
    """curl -u ... -X POST .../+simple/NAME/refresh and twine keep working with CSRF on."""
    app.config["WTF_CSRF_ENABLED"] = True

    refresh = client.post("/admin/dev/+simple/nothing-here/refresh", headers=ADMIN)
    api = client.post("/admin/+tokens", json={}, headers=ADMIN)

    assert refresh.status_code == 302
    assert api.status_code == 201


def test_the_server_ends_a_session_after_session_lifetime_whatever_the_cookie_says(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored session expires after 12 hours even if a cookie's own signature is still
    accepted (a client that keeps refreshing it, a clock that disagrees)."""
    login(client)
    assert client.get("/+account", headers=HTML).status_code == 200
    later = utcnow() + dt.timedelta(hours=12, seconds=1)
    monkeypatch.setattr("app.http.auth.utcnow", lambda: later)

    assert client.get("/+account", headers=HTML).status_code == 302


def test_a_session_cookie_from_before_stored_sessions_is_logged_out(app: Any, client: Any) -> None:
    """A cookie without a session id (signed, with the right password fingerprint, as an
    upgrade from an older pyshelf leaves them) no longer logs anyone in."""
    login(client)
    with client.session_transaction() as session:
        del session[SESSION_ID_KEY]

    assert client.get("/+account", headers=HTML).status_code == 302
