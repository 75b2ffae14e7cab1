"""bp: the web UI: pages to browse indexes, projects and docs; JSON twins for API clients.

Server-rendered Jinja templates, one stylesheet, no JavaScript. This package sets the UI up:
CSRF checks, sessions, security headers and template helpers (`init_app`), and imports the
modules whose views are on `bp`. The blueprint `bp` and the helpers every page module shares
are in app/http/web/base.py; the home, user and index pages in app/http/web/browse.py (`GET
/USER` and `GET /USER/INDEX/` belong to app/http/api.py, which hands browsers to `user_page`
and `index_page` there: one view per URL, werkzeug cannot route by Accept); project and
version pages with their docs URLs in app/http/web/projects.py; account and admin pages in
app/http/web/admin.py, yank and delete forms in app/http/web/actions.py, documentation zips in
app/http/web/docs.py, search in app/http/web/search.py.
"""

from __future__ import annotations

import datetime as dt

from flask import Flask, current_app, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app import __version__
from app.core.upstream import mask_url, url_origin
from app.http.errors import HTTPError

# They add views to bp:
from app.http.web import actions, admin, browse, docs, pages, projects, search  # noqa: F401
from app.http.web import advisories as advisory_views  # noqa: F401 - its view is on bp too
from app.http.web.base import bp as bp  # the web blueprint, as create_app registers it
from app.http.web.base import (
    current_location,
    doc_url,
    file_url,
    index_url,
    project_url,
    version_url,
)
from app.services import guard
from app.services.releases import may_configure, may_upload

csrf = CSRFProtect()

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
JSON_BLUEPRINTS = frozenset({"api", "devpi"})  # endpoints whose request bodies are JSON
# The UI has no JavaScript and no inline styles: a page may load only its own stylesheet and
# images (README badges come from https), and no other site may frame it (clickjacking).
# Docs (+doc) send their own sandboxing policy (app/http/web/docs.py), which is kept.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' https: data:; style-src 'self'; script-src 'none'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # private index URLs do not leak through links
}
HSTS = "max-age=15552000"  # 180 days; only on responses to HTTPS requests


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with `Secure` whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure when configured, or when this request is HTTPS (directly or via a proxy)."""
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def _protect_unsafe_requests() -> None:
    """Refuse state changes that a page on another site could make a browser send (CSRF).

    Browsers attach the session cookie and also cached Basic credentials (after any 401
    challenge) to requests that other sites trigger, so no credential exempts a request:
    every web form needs its CSRF token; the JSON API, uploads and the other client endpoints
    refuse what a browser marks as another site's (`Sec-Fetch-Site: cross-site`, a foreign
    `Origin`), check the token when a session cookie is the credential, and JSON endpoints take
    only `Content-Type: application/json`, which no form can send. pip, twine, uv, poetry,
    devpi-client and curl send neither `Origin` nor `Sec-Fetch-Site`.
    """
    if request.method in SAFE_METHODS:
        return
    check_token = current_app.config.get("WTF_CSRF_ENABLED", True)
    is_json_login = request.endpoint == "web.login" and request.is_json  # devpi-client
    if request.blueprint == "web" and not is_json_login:
        if check_token:
            csrf.protect()  # login CSRF too: checked with or without a session
        return
    _refuse_cross_site()
    has_header_credentials = request.headers.get("Authorization") or request.headers.get(
        "X-Devpi-Auth"
    )  # a header a page cannot set: no cookie is used then (app/http/auth.py)
    cookie = current_app.config["SESSION_COOKIE_NAME"]
    if check_token and not has_header_credentials and cookie in request.cookies:
        csrf.protect()
    if request.blueprint in JSON_BLUEPRINTS or is_json_login:
        _require_json_body()


def _refuse_cross_site() -> None:
    """403 for a request that a browser says another site's page made (Fetch Metadata,
    RFC 6454 `Origin`; `Origin: null` comes from sandboxes and counts as foreign)."""
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        raise HTTPError(
            403,
            "Cross-site request refused: a page on another site made the browser send it "
            "(Sec-Fetch-Site: cross-site).",
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return
    own = url_origin(request.host_url)  # X-Forwarded-Host/Proto count from trusted proxies only
    if own is None or url_origin(origin) != own:
        here = request.host_url.rstrip("/")
        raise HTTPError(
            403,
            f"Cross-origin request refused: Origin {origin[:100]} is not this site ({here}). "
            "Behind a proxy, pass X-Forwarded-Host and X-Forwarded-Proto and list the proxy "
            "in FORWARDED_ALLOW_IPS.",
        )


def _require_json_body() -> None:
    """415 unless a JSON endpoint's body (if any) is declared `application/json`: a form or
    a `text/plain` fetch from another site cannot declare it without a CORS preflight."""
    if request.is_json:
        return
    has_body = (
        bool(request.content_length)
        or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )
    if not has_body and not request.mimetype:
        return  # nothing to read: a DELETE, `curl -X POST .../+tokens`
    got = request.mimetype[:100] or "no Content-Type"
    raise HTTPError(
        415,
        f"Unsupported Media Type: send the body as JSON with Content-Type: application/json "
        f"(got {got}).",
    )


def _security_headers(response: Response) -> Response:
    """Headers that keep browsers from framing, sniffing or scripting any response."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:  # directly or through a trusted proxy (X-Forwarded-Proto)
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def hook_headers(app: Flask) -> tuple[list[tuple[str, str]], tuple[str, str]]:
    """The headers the app's hooks add to every response (devpi's, the security headers) and
    the HSTS one for HTTPS requests: for answers made without Flask (CachedPages, CachedFiles)."""
    fixed = [*app.extensions["pyshelf.devpi_headers"].items(), *SECURITY_HEADERS.items()]
    return fixed, ("Strict-Transport-Security", HSTS)


def init_app(app: Flask) -> None:
    """Sessions, CSRF protection, security headers and template helpers for the web UI."""
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # checked by _protect_unsafe_requests instead
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # valid as long as the session: no stale forms
    # flask-wtf checks only these methods; devpi push sends PUSH (app/http/devpi.py).
    app.config["WTF_CSRF_METHODS"] = ["POST", "PUT", "PATCH", "DELETE", "PUSH"]
    csrf.init_app(app)
    app.session_interface = SessionInterface()
    app.before_request(_protect_unsafe_requests)
    app.after_request(_security_headers)
    app.after_request(search.index_after_response)  # any request that queued search indexing
    app.jinja_env.filters["filesize"] = filesize
    app.jinja_env.filters["when"] = when
    app.jinja_env.globals.update(
        pyshelf_version=__version__,
        index_url=index_url,
        project_url=project_url,
        version_url=version_url,
        doc_url=doc_url,
        file_url=file_url,
        mask_url=mask_url,
        format_duration=guard.format_duration,
        block_rule_text=guard.block_rule_text,
        here=current_location,
        may_configure=may_configure,
        may_upload=may_upload,
    )


# --- helpers for templates and views ---------------------------------------------------------


def filesize(size: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def when(moment: dt.datetime | None) -> str:
    """A stored UTC time as '2026-01-31 14:05 UTC'."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"
