"""Web security, swept over the whole URL map: CSRF on every state-changing route, sessions
(fixation, logout, password change), cookie flags behind a proxy, login throttling over the
form, stored XSS through package metadata, open redirects, and security headers."""

from __future__ import annotations

import html.parser
import io
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.security import generate_password_hash

from app.cli import accounts
from app.http import api, auth
from app.http.web import admin
from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.web.helpers import ADMIN, HTML, JSON, csrf_token, docs_zip, upload_form

UNSAFE = {"POST", "PUT", "PATCH", "DELETE", "PUSH"}  # PUSH: devpi push
SAMPLE_ARGS = {
    "user": "admin",
    "index": "dev",
    "project": "demo-pkg",
    "version": "1.0.0",
    "path": "index.html",
    "name": "bob",
    "token_id": "1",
    "filename": "demo_pkg-1.0.0-py3-none-any.whl",
    "sha256": "0" * 64,
}
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(autouse=True)
def fast_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash new passwords with 1-round PBKDF2 instead of scrypt (tests only)."""

    def fast(password: str) -> str:
        return generate_password_hash(password, "pbkdf2:sha256:1")

    for module in (auth, api, accounts, admin):
        monkeypatch.setattr(module, "hash_password", fast)


def session_cookie(response: Any) -> str | None:
    """The session cookie's Set-Cookie header, or None."""
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith("session="):
            return header
    return None


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].removeprefix("session=")


def login_with_token(client: Any, password: str = ADMIN_PASSWORD, **extra: str) -> Any:
    token = csrf_token(client)
    form = {"username": "admin", "password": password, "csrf_token": token, **extra}
    return client.post("/+login", data=form, headers=HTML)


def unsafe_routes(app: Any) -> list[tuple[str, str, str]]:
    """(endpoint, method, sample URL) of every rule that changes state."""
    routes = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) & UNSAFE):
            args = {name: SAMPLE_ARGS.get(name, "x") for name in rule.arguments}
            routes.append((rule.endpoint, method, rule.build(args, append_unknown=False)[1]))
    return routes


# --- CSRF ------------------------------------------------------------------------------------


def test_every_state_changing_route_refuses_a_cookie_request_without_csrf_token(
    app: Any,
) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    assert login_with_token(client).status_code == 303
    routes = unsafe_routes(app)
    web_routes = [r for r in routes if r[0].startswith("web.")]
    assert len(web_routes) >= 10, web_routes  # the sweep really covers the web forms
    allowed = []
    for endpoint, method, url in routes:
        response = client.open(url, method=method, data={"x": "1"}, headers=HTML)
        if response.status_code != 400 or "CSRF" not in response.status:
            allowed.append((endpoint, method, url, response.status))
    # devpi-client's JSON login carries no cookie and is not a form (app/http/web/__init__.py)
    assert allowed == []


def test_every_web_form_refuses_a_post_without_token_even_without_a_cookie(app: Any) -> None:
    """Login CSRF: the web blueprint checks the token whether or not a session exists."""
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    refused = []
    for endpoint, method, url in unsafe_routes(app):
        if not endpoint.startswith("web."):
            continue
        client.delete_cookie("session")
        response = client.open(url, method=method, data={"x": "1"}, headers=HTML)
        refused.append((endpoint, response.status_code == 400 and "CSRF" in response.status))
    assert refused
    assert all(ok for _, ok in refused), refused


def test_a_token_from_another_session_is_refused(app: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    attacker, victim = app.test_client(), app.test_client()
    stolen = csrf_token(attacker)
    assert login_with_token(victim).status_code == 303
    response = victim.post("/+logout", data={"csrf_token": stolen}, headers=HTML)
    assert response.status_code == 400
    assert "CSRF" in response.status


def test_every_web_form_refuses_basic_credentials_without_csrf_token(app: Any) -> None:
    """Browsers send cached Basic credentials with other sites' forms: no credential exempts
    a web form from its token (issue #15)."""
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    refused = []
    for endpoint, method, url in unsafe_routes(app):
        if not endpoint.startswith("web."):
            continue
        response = client.open(url, method=method, data={"x": "1"}, headers={**HTML, **ADMIN})
        refused.append((endpoint, response.status))
    assert refused
    assert all(status == "400 Bad Request: The CSRF token is missing." for _, status in refused), (
        refused
    )
    users = client.get("/", headers={**JSON, **ADMIN}).get_json()["result"]
    assert "x" not in users  # the sample user name: /+admin/users made nobody


CROSS_SITE_HEADERS = [
    pytest.param({"Origin": "http://evil.example"}, id="foreign-origin"),
    pytest.param({"Origin": "null"}, id="null-origin"),
    pytest.param({"Origin": "https://localhost"}, id="other-scheme"),
    pytest.param({"Origin": "http://localhost:8080"}, id="other-port"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, id="sec-fetch-site"),
]


@pytest.mark.parametrize("headers", CROSS_SITE_HEADERS)
def test_client_endpoints_refuse_what_a_browser_marks_as_another_sites_request(
    app: Any, headers: dict[str, str]
) -> None:
    client = app.test_client()
    writes = [
        client.put("/eve", json={"password": "eve-password"}, headers={**ADMIN, **headers}),
        client.post("/admin/+tokens", json={}, headers={**ADMIN, **headers}),
        client.patch("/admin/dev", json={"title": "owned"}, headers={**ADMIN, **headers}),
        client.post(
            "/admin/dev/",
            data=upload_form(*make_wheel("demo-pkg", "1.0.0"), "demo-pkg", "1.0.0"),
            headers={**ADMIN, **headers},
        ),
        client.post("/+login", json={"user": "admin", "password": ADMIN_PASSWORD}, headers=headers),
    ]
    for response in writes:
        assert response.status_code == 403, response.status
        assert response.status.startswith(("403 Cross-origin", "403 Cross-site")), response.status
    assert client.get("/eve", headers={**JSON, **ADMIN}).status_code == 404
    stage = client.get("/admin/dev", headers={**JSON, **ADMIN}).get_json()["result"]
    assert (stage["projects"], stage["title"]) == ([], "")


@pytest.mark.parametrize(
    ("environ", "headers", "status"),
    [
        pytest.param({}, {"Origin": "http://localhost"}, 201, id="own-origin"),
        pytest.param({}, {"Sec-Fetch-Site": "same-origin"}, 201, id="same-origin"),
        pytest.param(
            {},
            {
                "Origin": "https://pkgs.example",
                "X-Forwarded-Host": "pkgs.example",
                "X-Forwarded-Proto": "https",
            },
            201,
            id="trusted-proxy",
        ),
        pytest.param(
            {"REMOTE_ADDR": "203.0.113.9"},
            {
                "Origin": "https://pkgs.example",
                "X-Forwarded-Host": "pkgs.example",
                "X-Forwarded-Proto": "https",
            },
            403,
            id="untrusted-peer-claims-the-origin",
        ),
    ],
)
def test_the_sites_own_origin_is_judged_by_trusted_proxy_headers_only(
    app: Any, environ: dict[str, str], headers: dict[str, str], status: int
) -> None:
    response = app.test_client().post(
        "/admin/+tokens", json={}, headers={**ADMIN, **headers}, environ_base=environ
    )
    assert response.status_code == status, response.status


@pytest.mark.parametrize(
    ("method", "url", "body", "content_type"),
    [
        pytest.param("POST", "/admin/+tokens", b'{"description": "x"}', "text/plain", id="text"),
        pytest.param(
            "POST", "/admin/+tokens", b"", "application/x-www-form-urlencoded", id="empty-form"
        ),
        pytest.param("PUT", "/eve", b'{"password": "eve-password"}', "", id="no-content-type"),
        pytest.param(
            "PATCH", "/admin/dev", b"title=owned", "application/x-www-form-urlencoded", id="form"
        ),
        pytest.param("POST", "/+login", b'{"user": "admin"}', "text/plain", id="devpi-login"),
    ],
)
def test_json_endpoints_refuse_bodies_not_declared_as_json(
    client: Any, method: str, url: str, body: bytes, content_type: str
) -> None:
    """A cross-site form or a `text/plain` fetch cannot declare JSON without a preflight."""
    response = client.open(
        url, method=method, data=body, headers={**ADMIN, "Content-Type": content_type}
    )
    got = content_type or "no Content-Type"
    if url == "/+login" and content_type == "text/plain":  # the login form: its CSRF token
        assert response.status_code == 400
        return
    assert response.status == (
        "415 Unsupported Media Type: send the body as JSON with Content-Type: application/json "
        f"(got {got})."
    )
    assert client.get("/eve", headers={**JSON, **ADMIN}).status_code == 404


def test_json_endpoints_without_a_body_need_no_content_type(client: Any) -> None:
    """`curl -u admin:PW -X POST .../+tokens` and bodyless DELETEs keep working."""
    assert client.post("/admin/+tokens", headers=ADMIN).status_code == 201
    assert client.put("/admin/scratch", headers=ADMIN).status_code == 201
    assert client.delete("/admin/scratch", headers=ADMIN).status_code == 200


# --- sessions --------------------------------------------------------------------------------


def test_login_replaces_the_session_so_a_planted_cookie_stays_anonymous(app: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    token = csrf_token(client)  # the visitor has a session (the attacker's, say)
    planted = client.get_cookie("session").value
    response = client.post(
        "/+login",
        data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token},
        headers=HTML,
    )
    assert response.status_code == 303
    fresh = client.get_cookie("session").value
    assert fresh != planted
    attacker = app.test_client()
    attacker.set_cookie("session", planted)
    page = attacker.get("/+account", headers=HTML)
    assert page.status_code == 302  # to the login page: the planted session knows nobody
    assert csrf_token(client, "/+account") != token  # a new CSRF token for the new identity


def test_logout_clears_the_cookie_and_the_session(app: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    login_with_token(client)
    assert client.get("/+account", headers=HTML).status_code == 200
    response = client.post(
        "/+logout", data={"csrf_token": csrf_token(client, "/+account")}, headers=HTML
    )
    assert response.status_code == 303
    cleared = session_cookie(response)
    assert cleared is not None
    assert "Expires=Thu, 01 Jan 1970" in cleared
    assert client.get("/+account", headers=HTML).status_code == 302


def test_a_password_change_ends_every_other_session_of_the_user(app: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    laptop, stolen = app.test_client(), app.test_client()
    login_with_token(laptop)
    stolen.set_cookie("session", laptop.get_cookie("session").value)  # a copied cookie
    assert stolen.get("/+account", headers=HTML).status_code == 200
    new_password = "a-brand-new-password-42"
    response = laptop.post(
        "/+account/password",
        data={
            "current_password": ADMIN_PASSWORD,
            "new_password": new_password,
            "new_password2": new_password,
            "csrf_token": csrf_token(laptop, "/+account"),
        },
        headers=HTML,
    )
    assert response.status_code in (200, 303), response.status
    assert stolen.get("/+account", headers=HTML).status_code == 302  # logged out
    assert laptop.get("/+account", headers=HTML).status_code == 200  # who changed it stays


# --- cookies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "headers", "secure"),
    [
        ("http://pkgs.example", {}, False),
        ("https://pkgs.example", {}, True),
        ("http://pkgs.example", {"X-Forwarded-Proto": "https"}, True),  # from 127.0.0.1
    ],
    ids=["http", "https", "proxy-https"],
)
def test_the_session_cookie_is_httponly_lax_and_secure_over_https(
    app: Any, base_url: str, headers: dict[str, str], secure: bool
) -> None:
    client = app.test_client()
    response = client.get("/+login", base_url=base_url, headers={**HTML, **headers})
    cookie = session_cookie(response)
    assert cookie is not None
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert ("Secure" in cookie) is secure


def test_an_untrusted_peer_cannot_make_the_cookie_secure(app: Any) -> None:
    client = app.test_client()
    response = client.get(
        "/+login",
        headers={**HTML, "X-Forwarded-Proto": "https"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},  # not in FORWARDED_ALLOW_IPS
    )
    assert "Secure" not in (session_cookie(response) or "")


# --- login throttling over the form ---------------------------------------------------------


def test_the_login_form_locks_after_repeated_failures_even_for_the_right_password(
    app: Any,
) -> None:
    from app.services import throttle

    client = app.test_client()
    app.config["WTF_CSRF_ENABLED"] = True
    for _ in range(throttle.MAX_FAILURES["user"]):
        response = login_with_token(client, password="wrong-password")
        assert response.status_code == 200
        assert "Invalid username or password" in response.get_data(as_text=True)
    response = login_with_token(client)  # the right password, too late
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert session_cookie(response) is None or "_user_id" not in str(response.headers)
    assert client.get("/+account", headers=HTML).status_code == 302


# --- stored XSS through metadata ------------------------------------------------------------


def _upload_hostile(client: Any) -> None:
    extra = "\n".join(
        [
            f"Author: {XSS}",
            f"Author-email: {XSS}@example.org",
            f"License: {XSS}",
            f"Keywords: {XSS}",
            "Project-URL: Homepage, javascript:alert(document.cookie)",
            "Project-URL: Docs, JAVASCRIPT:alert(1)",
            "Project-URL: Data, data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
            f"Project-URL: {XSS}, https://example.org/",
            "Home-page: javascript:alert(2)",
        ]
    )
    description = (
        f"# Title\n\n{XSS}\n\n[click](javascript:alert(3))\n\n"
        '<a href="javascript:alert(4)">raw</a> <iframe src="https://evil.example"></iframe>\n'
        '<svg onload="alert(5)"></svg> <form action="https://evil.example"><input></form>\n'
    )
    filename, data = make_wheel(
        "xss-pkg",
        "1.0.0",
        summary=XSS,
        description=description,
        description_content_type="text/markdown",
        extra_metadata=extra,
    )
    response = client.post(
        "/admin/dev/", data=upload_form(filename, data, "xss-pkg", "1.0.0"), headers=ADMIN
    )
    assert response.status_code == 200, response.status


def test_hostile_metadata_never_becomes_markup(client: Any) -> None:
    _upload_hostile(client)
    for path in [
        "/admin/dev/xss-pkg/",
        "/admin/dev/xss-pkg/1.0.0/",
        "/admin/dev/",
        "/+search?q=xss",
        "/+search?q=" + XSS,
    ]:
        assert_no_markup(client, path)


def assert_no_markup(client: Any, path: str) -> None:
    """The page has no script, no event handler and no javascript:/data: link."""
    page = client.get(path, headers=HTML)
    assert page.status_code == 200, path
    markup = Markup()
    markup.feed(page.get_data(as_text=True))
    assert markup.tags & {"script", "iframe", "svg", "object", "embed"} == set(), path
    assert markup.handlers == [], path  # no on* attribute anywhere
    assert markup.bad_urls == [], path


class Markup(html.parser.HTMLParser):
    """What a browser would see as elements: tags, event handlers and dangerous URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.handlers: list[str] = []
        self.bad_urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"{tag} {name}={value}")
            url = "".join((value or "").split()).lower()
            if (tag, url) == ("link", "data:,"):
                continue  # base.html's empty favicon, which saves a request per page
            if name in ("href", "src", "action", "formaction") and url.startswith(
                ("javascript:", "data:", "vbscript:")
            ):
                self.bad_urls.append(f"{tag} {name}={value}")


def test_docs_are_sandboxed_so_their_scripts_get_no_cookie(client: Any) -> None:
    _upload_hostile(client)
    docs = docs_zip({"index.html": b"<script>fetch('/+account')</script>"})
    form = {
        ":action": "doc_upload",
        "name": "xss-pkg",
        "version": "1.0.0",
        "content": (io.BytesIO(docs), "docs.zip"),
    }
    assert client.post("/admin/dev/", data=form, headers=ADMIN).status_code == 200
    response = client.get("/admin/dev/xss-pkg/1.0.0/+doc/index.html")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox ")
    assert "allow-same-origin" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert session_cookie(response) is None


# --- open redirects --------------------------------------------------------------------------


def assert_local(location: str) -> None:
    """A path on this site: no scheme, no host, nothing a browser reads as another host."""
    parts = urlsplit(location)
    assert (parts.scheme, parts.netloc) == ("", ""), location
    assert location.startswith("/"), location
    assert not location.startswith(("//", "/\\")), location
    assert not any(c in location for c in "\t\r\n\\"), location


HOSTILE_NEXT = [
    "https://evil.example/",
    "http://evil.example",
    "//evil.example/x",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",
    "/%2F%2Fevil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    " https://evil.example",
    "https:evil.example",
    "/\r\nLocation: https://evil.example",
]


def test_login_next_never_leaves_the_site(app: Any) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    for target in HOSTILE_NEXT:
        client = app.test_client()
        page = client.get("/+login", query_string={"next": target}, headers=HTML)
        assert page.status_code == 200
        response = login_with_token(client, next=target)
        assert response.status_code == 303, target
        assert_local(response.headers["Location"])


def test_form_next_fields_never_leave_the_site(app: Any) -> None:
    """`back()`, which forms use to return to their `next` field, behind a proxy prefix too."""
    from app.http.web.base import back

    for target in HOSTILE_NEXT:
        for script_root in ("", "/pypi"):
            with app.test_request_context(
                "/x",
                method="POST",
                data={"next": target},
                environ_base={"SCRIPT_NAME": script_root},
            ):
                assert_local(back("/fallback").headers["Location"])


# --- headers ---------------------------------------------------------------------------------


def test_every_response_refuses_framing_and_sniffing(client: Any) -> None:
    paths = ["/", "/+login", "/admin/dev/", "/+search?q=x", "/+status", "/admin/dev/+simple/"]
    paths += ["/nope/", "/+static/style.css", "/+metrics"]
    for path in paths:
        headers = client.get(path, headers=HTML).headers
        assert headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "same-origin", path


def test_web_pages_allow_no_script_at_all(client: Any) -> None:
    csp = client.get("/", headers=HTML).headers["Content-Security-Policy"]
    assert "script-src 'none'" in csp
    assert "object-src 'none'" in csp
    assert "base-uri 'none'" in csp


def test_an_app_behind_https_asks_browsers_to_stay_on_https(client: Any) -> None:
    """HSTS only when the request came over HTTPS (a plain-HTTP LAN appliance must not)."""
    assert "Strict-Transport-Security" not in client.get("/", headers=HTML).headers
    secure = client.get("/", headers=HTML, base_url="https://pkgs.example")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")


def test_basic_auth_errors_say_nothing_about_the_password(client: Any) -> None:
    guess = "hunter2-guess"
    response = client.get("/+account", headers={"Authorization": basic_auth("admin", guess)})
    assert response.status_code in (302, 401, 403)
    assert guess.encode() not in response.get_data()
    assert guess not in str(response.headers)
