"""CachedPages: WSGI middleware that answers GET and HEAD of a stored public project page from
the page cache (app/services/pagecache.py) without Flask's request context; the event loop
(app/http/loop.py) answers with the same `CachedPages.stored()`. The views that build and store
those pages are app/http/simple.py's."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from flask import Flask

from app.core.dists import normalize_name
from app.data.db import OwnConnection
from app.http.simple import content_type_header, negotiate, seen_etags, wants_gzip
from app.http.web import hook_headers
from app.services.pagecache import PageCache, PageKey

PAGE_PATH_RE = re.compile(r"^/([^/]+)/([^/]+)/\+simple/([^/]+)/$")


@dataclass(frozen=True)
class StoredPage:
    """A stored public page as CachedPages and the event loop (app/http/loop.py) send it."""

    status: str  # "200 OK", or "304 NOT MODIFIED" when the client's ETag matched
    headers: list[tuple[str, str]]  # the view's and the hooks' (without HSTS)
    body: bytes  # b"" for a 304; a HEAD gets the headers alone


class CachedPages:
    """WSGI middleware in front of the Flask app: GET and HEAD of a stored public project page
    are answered from the page cache without a request context, hooks or session; everything
    else (a miss, a restricted page, a redirect, `If-None-Match: *`) goes to the app.

    The answer carries the headers the app's hooks add to every response (devpi's, the
    security headers): tests/test_simple.py compares both ways header by header.
    """

    def __init__(self, app: Flask, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app
        self.cache: PageCache = app.extensions["pyshelf.pages"]
        self.fixed, self.hsts = hook_headers(app)
        app.extensions["pyshelf.cached_pages"] = self

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        page = self.stored(environ)
        if page is None:
            return self.wsgi_app(environ, start_response)
        environ["pyshelf.route_kind"] = "simple"  # for /+metrics, as app/http/metrics.py labels it
        headers = page.headers
        if environ.get("wsgi.url_scheme") == "https":
            headers = [*headers, self.hsts]
        start_response(page.status, headers)
        return [page.body] if page.body and environ["REQUEST_METHOD"] != "HEAD" else []

    def stored(
        self, environ: dict[str, Any], own: OwnConnection | None = None
    ) -> StoredPage | None:
        """The stored public page a GET or HEAD (`environ`: its WSGI keys) asks for, or None
        when the app must answer. `own`: the connection to read it on (the event loop's)."""
        method = environ.get("REQUEST_METHOD")
        path = environ.get("PATH_INFO", "")
        match = PAGE_PATH_RE.match(path) if method in ("GET", "HEAD") and path.isascii() else None
        if match is None or normalize_name(match[3]) != match[3]:
            return None
        seen = seen_etags(environ.get("HTTP_IF_NONE_MATCH"))
        if seen is None:
            return None
        query = environ.get("QUERY_STRING")
        format_param = parse_qs(query).get("format", [None])[0] if query else None
        mime = negotiate(environ.get("HTTP_ACCEPT"), format_param)
        key = PageKey(
            f"{match[1]}/{match[2]}",
            match[3],
            f"{mime} {environ.get('SCRIPT_NAME', '').rstrip('/')}",
        )
        hit = self.cache.get(key, seen, wants_gzip(environ.get("HTTP_ACCEPT_ENCODING")), own)
        if hit is None or not hit.is_public:
            return None
        headers = [
            ("ETag", f'"{hit.etag}"'),
            ("Cache-Control", hit.cache_control),
            ("Vary", "Accept, Accept-Encoding" if hit.has_gzip else "Accept"),
            *self.fixed,
        ]
        if hit.body is None:
            return StoredPage("304 NOT MODIFIED", headers, b"")
        headers += [
            ("Content-Type", content_type_header(mime)),
            ("Content-Length", str(len(hit.body))),
        ]
        if hit.is_gzip:
            headers.append(("Content-Encoding", "gzip"))
        return StoredPage("200 OK", headers, hit.body)
