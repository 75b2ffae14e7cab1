"""bp: the simple repository API, /USER/INDEX/+simple/[PROJECT/] (PEP 503, 629, 658, 691, 700)."""

from __future__ import annotations

import hashlib
import html
import json
from typing import Any

from flask import Blueprint, Response, current_app, redirect, request

from app.auth import require_read
from app.db import get_session
from app.dists import normalize_name
from app.errors import HTTPError, upstream_failed
from app.indexes import (
    Dist,
    ProjectView,
    get_index,
    project_names,
    project_view,
    readable_order,
)
from app.models import Index
from app.upstream import UpstreamError

bp = Blueprint("simple", __name__)

API_VERSION = "1.4"  # R12, R19: HTML stays at 1.4 (PEP 833)
MIME_JSON = "application/vnd.pypi.simple.v1+json"
MIME_HTML = "application/vnd.pypi.simple.v1+html"
MIME_TEXT_HTML = "text/html"
# R33: on equal quality the server prefers text/html, then v1+html, then v1+json (as PyPI).
OFFERS = (MIME_TEXT_HTML, MIME_HTML, MIME_JSON)
ALIASES = {
    "application/vnd.pypi.simple.latest+json": MIME_JSON,
    "application/vnd.pypi.simple.latest+html": MIME_HTML,
}  # R34
CACHE_LOCAL = "no-cache"  # R48: uploads must show at once; clients revalidate with the ETag
CACHE_MIRROR = "public, max-age=600"  # R48: pages made only from upstream data


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

    Nothing acceptable falls back to text/html, as PyPI does (R35 a).
    """
    if format_param:
        # An unencoded "+" in the query (`?format=application/vnd.pypi.simple.v1+json`, as docs
        # and uv's comments write it) arrives as a space; media types never contain one.
        wanted = format_param.strip().replace(" ", "+").lower()
        chosen = ALIASES.get(wanted, wanted)
        if chosen in OFFERS:
            return chosen  # R36: exactly one media type, taking precedence over Accept
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
    return dist.upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # R24: UTC with Z


def _href(dist: Dist) -> str:
    return f"{request.script_root}/{dist.path}"


def detail_json(view: ProjectView) -> dict[str, Any]:
    """The PEP 691/700 JSON document of a project page."""
    files = []
    versions: dict[str, None] = {}
    for dist in view.dists:
        versions.setdefault(dist.version, None)
        entry: dict[str, Any] = {
            "filename": dist.filename,
            "url": _href(dist),
            "hashes": {"sha256": dist.sha256} if dist.sha256 else {},
            "requires-python": dist.requires_python,
            "yanked": dist.yanked,
            "core-metadata": {"sha256": dist.metadata_sha256} if dist.metadata_sha256 else False,
        }
        if dist.size is not None:
            entry["size"] = dist.size
        upload_time = _upload_time(dist)
        if upload_time:
            entry["upload-time"] = upload_time
        files.append(entry)
    return {
        "meta": {"api-version": API_VERSION},
        "name": view.normalized_name,
        "versions": list(versions),
        "files": files,
    }


def detail_html(view: ProjectView) -> str:
    """The PEP 503 HTML page of a project (R7-R13)."""
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        f"    <title>Links for {html.escape(view.name)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {html.escape(view.name)}</h1>",
    ]
    for dist in view.dists:
        href = _href(dist) + (f"#sha256={dist.sha256}" if dist.sha256 else "")
        attrs = [f'href="{html.escape(href)}"']
        if dist.requires_python:
            attrs.append(f'data-requires-python="{html.escape(dist.requires_python)}"')
        if dist.yanked is not False:
            # R11: always a value, "" when there is no reason (pip ignores a bare attribute)
            reason = "" if dist.yanked is True else str(dist.yanked)
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        if dist.metadata_sha256:
            value = f"sha256={dist.metadata_sha256}"
            attrs.append(f'data-core-metadata="{value}" data-dist-info-metadata="{value}"')
        lines.append(f"    <a {' '.join(attrs)}>{html.escape(dist.filename)}</a><br>")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines)


def list_html(names: list[str]) -> str:
    """The PEP 503 HTML project list, with relative hrefs (R6)."""
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


def _page(body: str, mime: str, cache_control: str) -> Response:
    """A negotiated page with a strong ETag per representation; 304 when it still matches (R47)."""
    data = body.encode("utf-8")
    etag = hashlib.sha256(mime.encode() + b"\0" + data).hexdigest()[:32]
    content_type = mime if mime == MIME_JSON else f"{mime}; charset=utf-8"  # R18, R32
    response = Response(data, content_type=content_type)
    response.set_etag(etag)
    response.headers["Cache-Control"] = cache_control
    response.headers["Vary"] = "Accept"  # R37
    return response.make_conditional(request)


def _mirror_source() -> Any:
    return current_app.extensions["pyshelf.mirror"]


def _index_or_404(user: str, index: str) -> Index:
    found = get_index(get_session(), user, index)
    if found is None:
        raise HTTPError(404, f"Index {user}/{index} does not exist.")
    return found


@bp.get("/<user>/<index>/+simple")
def project_list_no_slash(user: str, index: str) -> Response:
    """Redirect to the canonical URL with a trailing slash (R3)."""
    return redirect(f"{request.script_root}/{user}/{index}/+simple/", 301)


@bp.route("/<user>/<index>/+simple/", methods=["GET", "HEAD"])
def project_list(user: str, index: str) -> Response:
    """The index's project list: its own projects, its bases', and cached mirror ones."""
    found = _index_or_404(user, index)
    reader = require_read(found)
    names = project_names(get_session(), found, _mirror_source(), reader=reader)
    mime = negotiate(request.headers.get("Accept"), request.args.get("format"))
    if mime == MIME_JSON:
        body = json.dumps(
            {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]}
        )
    else:
        body = list_html(names)
    return _page(body, mime, CACHE_MIRROR if found.is_mirror else CACHE_LOCAL)


@bp.get("/<user>/<index>/+simple/<project>")
def project_page_no_slash(user: str, index: str, project: str) -> Response:
    """Redirect to the normalized name with a trailing slash (R2, R3)."""
    target = normalize_name(project)
    return redirect(f"{request.script_root}/{user}/{index}/+simple/{target}/", 301)


@bp.route("/<user>/<index>/+simple/<project>/", methods=["GET", "HEAD"])
def project_page(user: str, index: str, project: str) -> Response:
    """A project's files across the index and its bases, as PEP 503 HTML or PEP 691 JSON."""
    normalized = normalize_name(project)
    if normalized != project:
        return redirect(f"{request.script_root}/{user}/{index}/+simple/{normalized}/", 301)
    found = _index_or_404(user, index)
    reader = require_read(found)
    try:
        view = project_view(get_session(), found, normalized, _mirror_source(), reader=reader)
    except UpstreamError as exc:
        raise upstream_failed(exc, normalized) from None
    if view is None:
        raise HTTPError(404, f"Project {normalized} is not on index {user}/{index}.")  # R4
    mime = negotiate(request.headers.get("Accept"), request.args.get("format"))
    body = json.dumps(detail_json(view)) if mime == MIME_JSON else detail_html(view)
    local = not found.is_mirror
    return _page(body, mime, CACHE_LOCAL if local else CACHE_MIRROR)


@bp.post("/<user>/<index>/+simple")  # else werkzeug 308s to the slash, and twine aborts
@bp.post("/<user>/<index>/+simple/")
@bp.post("/<user>/<index>/+simple/<project>")
@bp.post("/<user>/<index>/+simple/<project>/")
def post_to_simple(user: str, index: str, project: str | None = None) -> Response:
    """Uploads go to /USER/INDEX/, not the simple URL (R57: uv turns 405 into that hint)."""
    raise HTTPError(
        405,
        f"This is the simple index URL; upload to /{user}/{index}/ instead.",
        {"Allow": "GET, HEAD"},
    )


@bp.post("/<user>/<index>/+simple/<project>/refresh")
def refresh(user: str, index: str, project: str) -> Response:
    """Make the mirrors behind this index fetch the project page again on the next request."""
    found = _index_or_404(user, index)
    reader = require_read(found)
    normalized = normalize_name(project)
    mirror = _mirror_source()
    mirrors = [i for i in readable_order(get_session(), found, reader) if i.is_mirror]
    if not mirrors:
        raise HTTPError(400, f"{found.path} has no mirror in its bases; nothing to refresh.")
    refreshed = [i.path for i in mirrors if mirror.refresh(i, normalized)]
    if request.accept_mimetypes.best == "application/json":
        return Response(json.dumps({"refreshed": refreshed}), mimetype="application/json")
    return redirect(f"{request.script_root}/{found.path}/+simple/{normalized}/", 302)
