"""bp: the simple repository API, /USER/INDEX/+simple/[PROJECT/] (PEP 503, 629, 658, 691, 700)."""

from __future__ import annotations

import hashlib
import html
import json
from typing import Any

from flask import Blueprint, Response, current_app, g, has_request_context, redirect, request
from werkzeug.http import parse_accept_header, parse_etags
from werkzeug.wrappers import Response as BaseResponse  # redirect()'s; Flask's subclasses it

from app.core.dists import normalize_name
from app.core.upstream import MIME_HTML, MIME_JSON, MIME_TEXT_HTML, UpstreamError
from app.data.db import get_session
from app.data.models import utcnow
from app.http import metrics
from app.http.auth import authenticated_user, require_read
from app.http.errors import HTTPError, index_or_404, upstream_failed
from app.http.metrics import mark_guard
from app.services import guard, throttle
from app.services.indexes import is_public, may_read, resolution_order
from app.services.indexes_view import Dist, ProjectView, project_names, project_view
from app.services.pagecache import (
    GZIP_MIN_BYTES,
    GZIP_SUFFIX,
    REQUEST_GENERATION,
    Hit,
    PageCache,
    PageKey,
)
from app.services.releases import refresh_project
from app.services.status import QUARANTINED

bp = Blueprint("simple", __name__)

API_VERSION = "1.4"  # PEP 629, PEP 691: HTML stays at 1.4 (PEP 833)
# PEP 700 makes `size` mandatory from api-version 1.1 on. A plain PEP 503 upstream gives no
# sizes, and a HEAD per file at page build would cost one upstream request per file of the
# project: a JSON page with a file of unknown size (one the mirror has not cached yet) says
# 1.0 instead, where `size` is not defined; the other keys stay (clients ignore unknown keys).
API_VERSION_WITHOUT_SIZES = "1.0"
# PEP 691: on equal quality the server prefers text/html, then v1+html, then v1+json (as PyPI).
OFFERS = (MIME_TEXT_HTML, MIME_HTML, MIME_JSON)
ALIASES = {
    "application/vnd.pypi.simple.latest+json": MIME_JSON,
    "application/vnd.pypi.simple.latest+html": MIME_HTML,
}  # PEP 691's `latest` aliases
# RFC 9111 §5.2.2.4: uploads must show at once; clients revalidate with the ETag
CACHE_LOCAL = "no-cache"
CACHE_MIRROR = "public, max-age=600"  # RFC 9111 §5.2.2.1: pages made only from upstream data
STALE_HEADER = "X-Pyshelf-Stale"


class RequestNotes:
    """The mirror's notes (app/services/mirror/results.py PageNotes), kept on this request."""

    def served_stale(self, index_path: str) -> None:
        """Remember the mirror for the stale header; such a page is not stored."""
        if has_request_context():
            g.setdefault("pyshelf_stale", set()).add(index_path)

    def stored_page(self, before: int, after: int) -> None:
        """Nothing but this save changed since the request read `before`: the page it builds
        from what the mirror just stored may be stored at `after`."""
        if has_request_context() and g.get(REQUEST_GENERATION) == before:
            setattr(g, REQUEST_GENERATION, after)


def stale_header(response: Response) -> Response:
    """Say which mirrors answered from a stale cache (after_request hook)."""
    stale = g.get("pyshelf_stale")
    if stale:
        response.headers[STALE_HEADER] = ", ".join(sorted(stale))
    return response


def _parse_accept(header: str) -> list[tuple[str, float]]:
    ranges = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = max(0.0, min(1.0, float(value)))
                except ValueError:
                    quality = 0.0
        ranges.append((ALIASES.get(media.lower(), media.lower()), quality))
    return ranges


def negotiate(accept: str | None, format_param: str | None = None) -> str:
    """Pick the media type for a simple page (PEP 691): `?format=` first, then Accept q-values.

    Nothing acceptable falls back to text/html, as PyPI does (PEP 691).
    """
    if format_param:
        # An unencoded "+" in the query (`?format=application/vnd.pypi.simple.v1+json`, as docs
        # and uv's comments write it) arrives as a space; media types never contain one.
        wanted = format_param.strip().replace(" ", "+").lower()
        chosen = ALIASES.get(wanted, wanted)
        if chosen in OFFERS:
            return chosen  # PEP 691: exactly one media type, taking precedence over Accept
    if not accept:
        return MIME_TEXT_HTML
    ranges = _parse_accept(accept)
    best, best_q = MIME_TEXT_HTML, 0.0
    for offer in OFFERS:
        kind = offer.split("/")[0]
        quality, specificity = 0.0, -1
        for media, q in ranges:
            level = (
                2 if media == offer else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
            )
            if level > specificity:
                quality, specificity = q, level
        if quality > best_q:
            best, best_q = offer, quality
    return best


def _upload_time(dist: Dist) -> str | None:
    if dist.upload_time is None:
        return None
    return dist.upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # PEP 700: UTC with Z


def _provenance_url(path: str) -> str:
    """PEP 740 asks for an absolute URL: PUBLIC_URL's when the operator set one, else a path on
    this server (a page naming the Host header it was asked with could not be stored once for
    every client, and would point at whatever host a request claims)."""
    public = current_app.config["PYSHELF_SETTINGS"].public_url
    return f"{public.rstrip('/') if public else request.script_root}/{path}"


def detail_json(view: ProjectView) -> dict[str, Any]:
    """The PEP 691/700 JSON document of a project page."""
    files = []
    versions: dict[str, None] = {}
    has_all_sizes = True
    root = request.script_root  # read once: a page may list 10,000 files
    for dist in view.dists:
        versions.setdefault(dist.version, None)
        entry: dict[str, Any] = {
            "filename": dist.filename,
            "url": f"{root}/{dist.path}",
            "hashes": {"sha256": dist.sha256} if dist.sha256 else {},
            "requires-python": dist.requires_python,
            "yanked": dist.yanked,
            "core-metadata": {"sha256": dist.metadata_sha256} if dist.metadata_sha256 else False,
        }
        if dist.size is not None:
            entry["size"] = dist.size
        else:
            has_all_sizes = False
        upload_time = _upload_time(dist)
        if upload_time:
            entry["upload-time"] = upload_time
        if dist.provenance:  # PEP 740: the URL of the file's provenance object
            entry["provenance"] = _provenance_url(dist.provenance)
        files.append(entry)
    document: dict[str, Any] = {
        "meta": {"api-version": API_VERSION if has_all_sizes else API_VERSION_WITHOUT_SIZES},
        "name": view.normalized_name,
        "versions": list(versions),
        "files": files,
    }
    if view.marker is not None:
        # PEP 792 (api-version 1.4): `status`, and `reason` only when there is one. A page at
        # 1.0 (sizes unknown) keeps it too: clients ignore keys they do not know.
        status: dict[str, str] = {"status": view.marker.status}
        if view.marker.reason:
            status["reason"] = view.marker.reason
        document["project-status"] = status
    return document


def _status_meta(view: ProjectView) -> list[str]:
    """PEP 792's HTML markers: `pypi:project-status` and, with a reason, its `-reason` tag."""
    if view.marker is None:
        return []
    tags = [f'    <meta name="pypi:project-status" content="{html.escape(view.marker.status)}">']
    if view.marker.reason:
        reason = html.escape(view.marker.reason)
        tags.append(f'    <meta name="pypi:project-status-reason" content="{reason}">')
    return tags


def detail_html(view: ProjectView) -> str:
    """The PEP 503 HTML page of a project (PEP 592, 629, 658, 714)."""
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        *_status_meta(view),
        f"    <title>Links for {html.escape(view.name)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {html.escape(view.name)}</h1>",
    ]
    root = request.script_root  # read once: a page may list 10,000 files
    for dist in view.dists:
        href = f"{root}/{dist.path}" + (f"#sha256={dist.sha256}" if dist.sha256 else "")
        attrs = [f'href="{html.escape(href)}"']
        if dist.requires_python:
            attrs.append(f'data-requires-python="{html.escape(dist.requires_python)}"')
        if dist.yanked is not False:
            # PEP 592: always a value, "" when there is no reason (pip ignores a bare attribute)
            reason = "" if dist.yanked is True else str(dist.yanked)
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        if dist.metadata_sha256:
            value = f"sha256={dist.metadata_sha256}"
            attrs.append(f'data-core-metadata="{value}" data-dist-info-metadata="{value}"')
        if dist.provenance:  # PEP 740
            provenance = _provenance_url(dist.provenance)
            attrs.append(f'data-provenance="{html.escape(provenance)}"')
        lines.append(f"    <a {' '.join(attrs)}>{html.escape(dist.filename)}</a><br>")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines)


def list_html(names: list[str]) -> str:
    """The PEP 503 HTML project list, with relative hrefs."""
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        "    <title>Simple index</title>",
        "  </head>",
        "  <body>",
    ]
    for name in names:
        lines.append(
            f'    <a href="{html.escape(normalize_name(name))}/">{html.escape(name)}</a><br>'
        )
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines)


def _etag(mime: str, data: bytes) -> str:
    """A strong ETag per representation (RFC 9110 §8.8.3)."""
    return hashlib.sha256(mime.encode() + b"\0" + data).hexdigest()[:32]


def content_type_header(mime: str) -> str:
    return mime if mime == MIME_JSON else f"{mime}; charset=utf-8"  # PEP 691


def _page(data: bytes, mime: str, cache_control: str, *, etag: str | None = None) -> Response:
    """A negotiated page, a strong ETag per representation; 304 if it matches (RFC 9110 §13.1.2)."""
    response = Response(data, content_type=content_type_header(mime))
    response.set_etag(etag or _etag(mime, data))
    response.headers["Cache-Control"] = cache_control
    # RFC 9110 §12.5.5; large pages have a gzipped twin in the page cache
    response.headers["Vary"] = (
        "Accept, Accept-Encoding" if len(data) >= GZIP_MIN_BYTES else "Accept"
    )
    response.make_conditional(request)  # 304 when the ETag matches: it changes `response` in place
    return response


def _cached_page(hit: Hit, mime: str) -> Response:
    """A page from the page cache: 304 when the client has it (the body was not even read)."""
    if hit.body is None:
        response = Response(status=304)
        del response.headers["Content-Type"]
    else:
        response = Response(hit.body, content_type=content_type_header(mime))
        if hit.is_gzip:
            response.headers["Content-Encoding"] = "gzip"
    response.set_etag(hit.etag)
    response.headers["Cache-Control"] = hit.cache_control
    response.headers["Vary"] = "Accept, Accept-Encoding" if hit.has_gzip else "Accept"
    return response


def seen_etags(header: str | None) -> frozenset[str] | None:
    """The client's If-None-Match tags, gzip suffix removed; None for `*` (not from the cache)."""
    if not header:
        return frozenset()
    tags = parse_etags(header)
    if tags.star_tag:
        return None
    return frozenset(t.removesuffix(GZIP_SUFFIX) for t in tags.as_set(include_weak=True))


def wants_gzip(header: str | None) -> bool:
    return bool(header) and parse_accept_header(header)["gzip"] > 0


def _page_cache() -> PageCache:
    return current_app.extensions["pyshelf.pages"]


def _mirror_source() -> Any:
    return current_app.extensions["pyshelf.mirror"]


@bp.get("/<user>/<index>/+simple")
def project_list_no_slash(user: str, index: str) -> BaseResponse:
    """Redirect to the canonical URL with a trailing slash (PEP 503)."""
    return redirect(f"{request.script_root}/{user}/{index}/+simple/", 301)


@bp.route("/<user>/<index>/+simple/", methods=["GET", "HEAD"])
def project_list(user: str, index: str) -> Response:
    """The index's project list: its own projects, its bases', and cached mirror ones."""
    found = index_or_404(user, index)
    reader = require_read(found)
    names = project_names(get_session(), found, _mirror_source(), reader=reader)
    mime = negotiate(request.headers.get("Accept"), request.args.get("format"))
    if mime == MIME_JSON:
        body = json.dumps(
            {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]}
        )
    else:
        body = list_html(names)
    return _page(body.encode("utf-8"), mime, CACHE_MIRROR if found.is_mirror else CACHE_LOCAL)


@bp.get("/<user>/<index>/+simple/<project>")
def project_page_no_slash(user: str, index: str, project: str) -> BaseResponse:
    """Redirect to the normalized name with a trailing slash (PEP 503)."""
    target = normalize_name(project)
    return redirect(f"{request.script_root}/{user}/{index}/+simple/{target}/", 301)


@bp.route("/<user>/<index>/+simple/<project>/", methods=["GET", "HEAD"])
def project_page(user: str, index: str, project: str) -> BaseResponse:
    """A project's files across the index and its bases, as PEP 503 HTML or PEP 691 JSON.

    Served from the page cache (app/services/pagecache.py) when it holds this page: public pages
    without even loading the index; restricted ones once app/http/auth.py let the caller read every
    index the page was made from.
    """
    normalized = normalize_name(project)
    if normalized != project:
        return redirect(f"{request.script_root}/{user}/{index}/+simple/{normalized}/", 301)
    mime = negotiate(request.headers.get("Accept"), request.args.get("format"))
    cache = _page_cache()
    key = PageKey(f"{user}/{index}", normalized, f"{mime} {request.script_root}")
    seen = seen_etags(request.headers.get("If-None-Match"))
    want_gzip = wants_gzip(request.headers.get("Accept-Encoding"))
    hit = cache.get(key, seen, want_gzip) if seen is not None else None
    if hit is not None and hit.is_public:
        return _cached_page(hit, mime)

    session = get_session()
    generation = cache.generation(session)  # first: nothing read before it may be older
    setattr(g, REQUEST_GENERATION, generation)  # a mirror that stores its page moves it on
    found = index_or_404(user, index)
    order = resolution_order(session, found)
    reader = require_read(found, order=order)
    sees_all = reader is None or all(may_read(i, reader) for i in order)
    if hit is not None and sees_all:
        return _cached_page(hit, mime)
    mirror = _mirror_source()
    try:
        view = project_view(
            session, found, normalized, mirror, reader=reader, order=order, for_installers=True
        )
    except UpstreamError as exc:
        raise upstream_failed(exc, normalized) from None
    if view is None:
        # A 404, never a 403 or 500: uv tries its next index only after a 404.
        where = "in this offline mirror" if found.is_offline else "on index"
        raise HTTPError(404, f"Project {normalized} is not {where} {user}/{index}.")
    _count_left_out(view)
    body = json.dumps(detail_json(view)) if mime == MIME_JSON else detail_html(view)
    cache_control = CACHE_MIRROR if found.is_mirror else CACHE_LOCAL
    data = body.encode("utf-8")
    etag = _etag(mime, data)
    # A quarantined project's page is never cached: every such page is counted and logged.
    if not view.held_back and sees_all and not g.get("pyshelf_stale"):
        expires_at = mirror.expires_at(order, normalized)
        # A page that holds files back is good until the first of them is old enough.
        released_at = guard.next_change_at(view.withheld)
        if released_at is not None and (expires_at is None or released_at < expires_at):
            expires_at = released_at
        if expires_at is None or expires_at > utcnow():
            cache.put(
                key,
                g.get(REQUEST_GENERATION, generation),
                body=data,
                etag=etag,
                cache_control=cache_control,
                is_public=all(is_public(i) for i in order),
                expires_at=expires_at,
            )
    return _page(data, mime, cache_control, etag=etag)


def _count_left_out(view: ProjectView) -> None:
    """Count the files the guard left out of a page, by rule, and name the rules in the request
    log: block_vulnerable's first, then the block rules' and cooldowns' together, then a
    quarantine's."""
    vulnerable = [v for _, v in view.withheld if v.kind == guard.VULNERABLE]
    others = [v for _, v in view.withheld if v.kind != guard.VULNERABLE]
    if vulnerable:
        mark_guard(guard.VULNERABLE, f"{len(vulnerable)} files not listed")
        metrics.count_guard(guard.VULNERABLE, "page", len(vulnerable))
    for verdict in others:
        metrics.count_guard(verdict.kind, "page")
    if others:
        kinds = ",".join(sorted({verdict.kind for verdict in others}))
        mark_guard(kinds, f"{len(others)} files not listed")
    if view.held_back:
        mark_guard(QUARANTINED)
        metrics.count_guard(QUARANTINED, "page", len(view.held_back))


@bp.post("/<user>/<index>/+simple")  # else werkzeug 308s to the slash, and twine aborts
@bp.post("/<user>/<index>/+simple/")
@bp.post("/<user>/<index>/+simple/<project>")
@bp.post("/<user>/<index>/+simple/<project>/")
def post_to_simple(user: str, index: str, project: str | None = None) -> Response:
    """Uploads go to /USER/INDEX/, not the simple URL (uv turns a 405 into that hint)."""
    raise HTTPError(
        405,
        f"This is the simple index URL; upload to /{user}/{index}/ instead.",
        {"Allow": "GET, HEAD"},
    )


@bp.post("/<user>/<index>/+simple/<project>/refresh")
def refresh(user: str, index: str, project: str) -> BaseResponse:
    """Make the mirrors behind this index fetch the project page again on the next request.

    Logged-in readers may always; anonymous callers (devpi-client's `devpi refresh` sends no
    credentials) MAX_ANONYMOUS_REFRESHES times per address, then 429: strangers must not make
    the server hammer the upstream.
    """
    found = index_or_404(user, index)
    reader = require_read(found)
    if authenticated_user() is None:
        database = current_app.extensions["pyshelf.db"]
        wait = throttle.count_anonymous_refresh(database, request.remote_addr)
        if wait:
            raise HTTPError(
                429,
                f"Too many refreshes from your address; retry in {wait} s, or log in.",
                {"Retry-After": str(wait)},
            )
    normalized = normalize_name(project)
    refreshed = refresh_project(get_session(), found, normalized, _mirror_source(), reader)
    if request.accept_mimetypes.best == "application/json":
        return Response(json.dumps({"refreshed": refreshed}), mimetype="application/json")
    return redirect(f"{request.script_root}/{found.path}/+simple/{normalized}/", 302)
