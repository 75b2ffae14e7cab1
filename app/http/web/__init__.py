"""bp: the web UI: pages to browse indexes, projects and docs; JSON twins for API clients.

Server-rendered Jinja templates, one stylesheet, no JavaScript. `GET /USER` and
`GET /USER/INDEX/` belong to app/http/api.py, which hands browsers to `user_page` and
`index_page` here (one view per URL: werkzeug cannot route by Accept). The blueprint `bp`
and the helpers every page module shares are in app/http/web/base.py; account and admin pages in
app/http/web/admin.py, yank and delete forms in app/http/web/actions.py, documentation zips in
app/http/web/docs.py, search in app/http/web/search.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from urllib.parse import quote

from flask import (
    Flask,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app import __version__
from app.core.dists import normalize_name
from app.core.render import render_description
from app.core.upstream import UpstreamError, mask_url, url_origin
from app.data.db import get_session
from app.data.models import Index, MirrorPage, Project, Promotion, User
from app.http.auth import authenticated_user, current_reader, require_read, require_user
from app.http.devpi import users_json
from app.http.errors import HTTPError, upstream_failed
from app.http.web import actions, admin, docs, pages, search  # noqa: F401 - they add views to bp
from app.http.web import advisories as advisory_views  # its view is on bp too
from app.http.web.base import (
    bp,
    current_location,
    doc_url,
    file_url,
    index_or_404,
    index_url,
    login_redirect,
    page_number,
    project_url,
    version_url,
    wants_json,
)
from app.services import advisories, guard
from app.services.indexes import (
    ProjectView,
    Reader,
    acl_read_of,
    get_index_by_path,
    is_public,
    may_read,
    project_view,
    readable_order,
    resolution_order,
)
from app.services.mirror_description import mirror_metadata, newest_described
from app.services.promote import promotable_targets, promotions_of
from app.services.releases import (
    may_change,
    may_configure,
    may_upload,
    refresh_project,
    shown_bases,
)
from app.services.status import STATUSES

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
VERSIONS_PER_PAGE = 20  # a mirrored project may have hundreds of versions


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


def require_read_page(index: Index) -> Reader | None:
    """require_read for web pages: a browser without credentials goes to the login page (and
    back) instead of getting the 401 challenge, which would open its password dialog. API
    clients, which ask for JSON or send credentials, get the 401 (RFC 9110 §15.5.2)."""
    try:
        return require_read(index)
    except HTTPError as exc:
        sent = request.headers.get("Authorization") or request.headers.get("X-Devpi-Auth")
        if exc.status != 401 or sent or wants_json():
            raise
        login = url_for("web.login", next=current_location())
        raise HTTPError(303, f"Log in to read index {index.path}.", {"Location": login}) from None


def readable_rows(rows: list[pages.IndexRow]) -> list[pages.IndexRow]:
    """The index rows the caller may read (a restricted index is not even listed, nor named
    as a base)."""
    reader = current_reader()
    session = get_session()
    return [
        dataclasses.replace(row, bases=shown_bases(session, row.index, reader))
        for row in rows
        if may_read(row.index, reader)
    ]


def _project_view(
    index: Index, normalized: str, reader: Reader | None, *, ignore_bases: bool = False
) -> ProjectView:
    mirror = current_app.extensions["pyshelf.mirror"]
    try:
        view = project_view(
            get_session(),
            index,
            normalized,
            mirror,
            ignore_bases=ignore_bases,
            reader=reader,
        )
    except UpstreamError as exc:
        raise upstream_failed(exc, normalized) from None
    if view is None:
        raise HTTPError(404, f"Project {normalized} is not on index {index.path}.")
    if view.held_back and _sees_held_back(view, reader):
        view = dataclasses.replace(view, dists=view.held_back)
    return view


def _may_set_status_here(index: Index, normalized: str, reader: Reader | None) -> bool:
    """Whether the project page offers the status form: the index's own project, to those who
    may set it (the JSON API's PUT .../+status rule)."""
    caller = authenticated_user()
    if caller is None or index.is_mirror or (reader is not None and reader.scope is not None):
        return False
    has_project = get_session().scalar(
        select(Project.id).where(
            Project.index_id == index.id, Project.normalized_name == normalized
        )
    )
    return has_project is not None and may_change(index, caller)


def _sees_held_back(view: ProjectView, reader: Reader | None) -> bool:
    """Whether the caller may see a quarantined project's files (never download them): those
    who may set the status where it was set, logged in without a token limited to an index."""
    caller = authenticated_user()
    if caller is None or view.marker is None or (reader is not None and reader.scope is not None):
        return False
    where = get_index_by_path(get_session(), view.marker.index_path)
    return where is not None and may_change(where, caller)


def _root_url() -> str:
    """This site's base URL, with the script root (a proxy's path prefix)."""
    return request.host_url.rstrip("/") + request.script_root


def _absolute(path: str) -> str:
    """An absolute URL from a path that already starts with the script root."""
    return request.host_url.rstrip("/") + path


# --- home, search, users, indexes ------------------------------------------------------------


@bp.get("/")
def home() -> Response | str:
    """The indexes on this server, with a search box; JSON of the users for API clients."""
    accept = request.accept_mimetypes
    if accept.quality("application/json") > accept.quality("text/html"):  # not for */*
        return users_json()  # `devpi use -l`, `devpi user -l`
    rows = pages.all_indexes(get_session())
    shown = readable_rows(rows)
    # Indexes the caller may not read are left out; anonymous visitors are told why.
    hidden = len(shown) < len(rows) and authenticated_user() is None
    return render_template("home.html", rows=shown, has_hidden=hidden)


def user_page(username: str) -> str:
    """A user and their indexes (HTML for GET /USER; app/http/api.py answers JSON)."""
    session = get_session()
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise HTTPError(404, f"User {username} does not exist.")
    rows = [row for row in pages.all_indexes(session) if row.index.owner_id == user.id]
    return render_template("user.html", user=user, rows=readable_rows(rows))


def index_page(username: str, name: str) -> Response | str:
    """An index: its settings in words, its projects, and snippets for pip and twine."""
    if not request.path.endswith("/"):
        return redirect(request.script_root + request.path + "/", 308)
    session = get_session()
    index = index_or_404(username, name)
    reader = require_read_page(index)
    page = page_number()
    if index.is_mirror:
        projects, total = pages.mirror_projects(session, index, page)
    else:
        projects, total = pages.stage_projects(session, index, page)
    imports = pages.bundle_imports(session, index, [p.normalized_name for p in projects])
    base = _root_url()
    host = request.host
    return render_template(
        "index.html",
        index=index,
        projects=projects,
        imports=imports,
        total=total,
        page=page,
        page_size=pages.PAGE_SIZE,
        simple_url=f"{base}/{index.path}/+simple/",
        upload_url=f"{base}/{index.path}/",
        host=host,
        needs_trusted_host=request.scheme == "http",
        bases=[
            (path, get_index_by_path(session, path) is not None)
            for path in (index.bases if reader is None else shown_bases(session, index, reader))
        ],
        acl_read=acl_read_of(index),
        is_public=is_public(index),
    )


# --- projects and versions -------------------------------------------------------------------


def _mirror_pages(
    index: Index, normalized: str, reader: Reader | None
) -> list[tuple[Index, MirrorPage | None]]:
    """Each mirror behind the index (that the reader may read) with its cached page of the
    project (or None)."""
    mirrors = [i for i in readable_order(get_session(), index, reader) if i.is_mirror]
    # A fresh session: the mirror has just written the page in its own transaction, which the
    # request's older snapshot (SQLite WAL) would not see.
    with current_app.extensions["pyshelf.db"].session() as session:
        found = {
            page.index_id: page
            for page in session.scalars(
                select(MirrorPage).where(
                    MirrorPage.index_id.in_([m.id for m in mirrors]),
                    MirrorPage.normalized_name == normalized,
                )
            )
        }
    return [(mirror, found.get(mirror.id)) for mirror in mirrors]


@bp.get("/<user>/<index>/<project>/")
def project_page(user: str, index: str, project: str) -> Response | str:
    """A project: versions newest first with their files, the description, docs, mirror state."""
    normalized = normalize_name(project)
    if normalized != project:
        return redirect(f"{request.script_root}/{user}/{index}/{quote(normalized)}/", 301)
    session = get_session()
    found = index_or_404(user, index)
    reader = require_read_page(found)
    # devpi-client asks with `?ignore_bases` for the versions it may delete.
    view = _project_view(found, normalized, reader, ignore_bases="ignore_bases" in request.args)
    storage = current_app.extensions["pyshelf.storage"]
    mirror_ids = {i.path: i.id for i in resolution_order(session, found) if i.is_mirror}
    versions = pages.group_versions(pages.file_rows(view, set(mirror_ids)))
    docsets = docs.doc_sets(session, found, normalized, reader)
    known = advisories.for_project(session, normalized)
    if wants_json():
        metadata = pages.hosted_metadata(session, found, normalized, reader=reader)
        root = _root_url()
        result = {
            v.version: pages.version_data(
                view.name,
                v,
                metadata.get(v.version),
                root,
                _absolute(doc_url(found.path, normalized, v.version))
                if v.version in docsets
                else None,
                known.affecting(v.version),
            )
            for v in versions
        }
        return jsonify({"type": "projectconfig", "result": result})
    latest = pages.latest_of(versions)
    latest_row = next((v for v in versions if v.version == latest), None)
    meta = (
        pages.hosted_metadata(session, found, normalized, latest, reader=reader).get(latest)
        if latest
        else None
    )
    described = latest if meta is not None else None
    if meta is None:
        # The newest version a mirror has cached a file of describes the project until the
        # latest one is cached (a plain PEP 503 upstream gives nothing else to read it from).
        found_meta = newest_described(session, storage, versions, latest, mirror_ids)
        if found_meta is not None:
            described, meta = found_meta
    # Only when nothing of the latest version is cached does the page say it will come.
    is_latest_cached = latest_row is not None and any(f.is_cached for f in latest_row.files)
    page = page_number()
    shown = versions[(page - 1) * VERSIONS_PER_PAGE : page * VERSIONS_PER_PAGE]
    return render_template(
        "project.html",
        index=found,
        view=view,
        versions=shown,
        version_count=len(versions),
        page=page,
        has_next=page * VERSIONS_PER_PAGE < len(versions),
        latest=latest,
        described=described,
        is_latest_cached=is_latest_cached,
        meta=meta,
        description=render_description(
            meta.description if meta else None, meta.description_content_type if meta else None
        ),
        docs_versions=docsets,
        latest_docs=docs.latest_version(list(docsets)),
        mirror_pages=_mirror_pages(found, normalized, reader) if view.is_mirrored else [],
        statuses=STATUSES,
        may_set_status=_may_set_status_here(found, normalized, reader),
        advisories_of=known.affecting,
    )


def _same_version(wanted: str, candidate: str) -> bool:
    try:
        return Version(wanted) == Version(candidate)
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        return wanted == candidate


@bp.get("/<user>/<index>/<project>/<version>/")
def version_page(user: str, index: str, project: str, version: str) -> Response | str:
    """A version: its files, metadata, documentation, and (with rights) docs upload and yank."""
    normalized = normalize_name(project)
    if normalized != project:
        target = f"{request.script_root}/{user}/{index}/{quote(normalized)}/{quote(version)}/"
        return redirect(target, 301)
    session = get_session()
    found = index_or_404(user, index)
    reader = require_read_page(found)
    view = _project_view(found, normalized, reader)
    storage = current_app.extensions["pyshelf.storage"]
    mirror_ids = {i.path: i.id for i in resolution_order(session, found) if i.is_mirror}
    versions = pages.group_versions(pages.file_rows(view, set(mirror_ids)))
    if version == "latest":
        latest = pages.latest_of(versions)
        if latest is None:
            raise HTTPError(404, f"{normalized} has no versions on {found.path}.")
        return redirect(version_url(found.path, normalized, latest), 302)
    row = next((v for v in versions if _same_version(version, v.version)), None)
    docset = docs.find_docset(session, found, normalized, version, reader)
    if row is None and docset is None:
        raise HTTPError(404, f"{normalized} {version} is not on index {found.path}.")
    row = row or pages.VersionRow(version, [])
    meta = pages.hosted_metadata(session, found, normalized, row.version, reader=reader).get(
        row.version
    )
    if meta is None:
        meta = mirror_metadata(session, storage, row.files, mirror_ids)
    has_docs = docset is not None
    affecting = advisories.for_project(session, normalized).affecting(row.version)
    if wants_json():
        root = _root_url()
        link = _absolute(doc_url(found.path, normalized, row.version)) if has_docs else None
        data = pages.version_data(view.name, row, meta, root, link, affecting)
        return jsonify({"type": "versiondata", "result": data})
    hosted = session.scalar(
        select(Project).where(Project.index_id == found.id, Project.normalized_name == normalized)
    )
    caller = authenticated_user()
    own_files = [f for f in row.files if f.index_path == found.path]
    may_yank = caller is not None and bool(own_files) and may_change(found, caller)
    return render_template(
        "version.html",
        index=found,
        view=view,
        version=row,
        meta=meta,
        docset=docset[0] if docset else None,
        description=render_description(
            meta.description if meta else None, meta.description_content_type if meta else None
        ),
        may_upload_docs=(
            caller is not None
            and hosted is not None
            and not found.is_mirror
            and may_upload(found, caller)
        ),
        may_yank=may_yank,
        may_delete=may_yank and found.volatile,
        own_files=own_files,
        promote_targets=(
            promotable_targets(session, found, caller)
            if caller is not None and own_files and not found.is_mirror
            else []
        ),
        promotions=_promotions(session, found, normalized, row.version),
        advisories=affecting,
        refused_by=advisory_views.refused_by(session, found, row, affecting),
    )


def _promotions(
    session: Session, index: Index, normalized: str, version: str
) -> list[tuple[Promotion, str | None]]:
    """The version's promotions into `index`, each with its source as the visitor may see it:
    None for an index they may not read (a restricted index is never named to strangers)."""
    reader = current_reader()
    shown = []
    for record in promotions_of(session, index, normalized, version):
        source = get_index_by_path(session, record.source_path)
        readable = source is None or may_read(source, reader)
        shown.append((record, record.source_path if readable else None))
    return shown


@bp.post("/<user>/<index>/<project>/+refresh")
def refresh(user: str, index: str, project: str) -> Response:
    """Make the mirrors behind this index fetch the project page again (the Refresh button);
    only for logged-in readers: strangers must not make the server hammer the upstream."""
    found = index_or_404(user, index)
    reader = require_read_page(found)
    normalized = normalize_name(project)
    if authenticated_user() is None:
        if wants_json():  # an API client: 401 with the challenge
            require_user()
        return redirect(url_for("web.login", next=project_url(found.path, normalized)), 303)
    mirror = current_app.extensions["pyshelf.mirror"]
    refreshed = refresh_project(get_session(), found, normalized, mirror, reader)
    if refreshed:
        flash(f"{normalized} will be fetched again from {', '.join(refreshed)}.", "info")
    else:
        flash(f"{normalized} was not cached yet; it is fetched on first use.", "info")
    return redirect(project_url(found.path, normalized), 303)


# --- documentation ---------------------------------------------------------------------------


@bp.get("/<user>/<index>/<project>/<version>/+doc")
def doc_root_no_slash(user: str, index: str, project: str, version: str) -> Response:
    """Redirect to `+doc/` so that relative links in the docs resolve."""
    return redirect(request.script_root + request.path + "/", 301)


@bp.get("/<user>/<index>/<project>/<version>/+doc/")
@bp.get("/<user>/<index>/<project>/<version>/+doc/<path:path>")
def doc_file(user: str, index: str, project: str, version: str, path: str = "") -> Response:
    """A file of a version's documentation (`latest`: the highest version with docs).

    Docs that are not public go to logged-in browsers through a grant URL (app/http/web/docs.py):
    the sandboxed pages' own requests carry no session cookie.
    """
    found = index_or_404(user, index)
    normalized = normalize_name(project)
    base = doc_url(found.path, normalized, version)
    session = get_session()
    if path.startswith(docs.GRANT_PREFIX):
        grant, _, path = path.removeprefix(docs.GRANT_PREFIX).partition("/")
        reader = docs.reader_of_grant(session, grant, found, normalized, version)
        if reader is None:  # expired or revoked: start over (a browser's cookie renews it)
            return redirect(base + quote(path), 302)
        g.needs_read_access = True  # private caching, as require_read would
        base = f"{base}{docs.GRANT_PREFIX}{grant}/"
    else:
        reader = require_read_page(found)
        by_cookie = not (
            request.headers.get("Authorization") or request.headers.get("X-Devpi-Auth")
        )
        if reader is not None and reader.user is not None and by_cookie:
            grant = docs.new_grant(found, normalized, version, reader.user)
            return redirect(f"{base}{docs.GRANT_PREFIX}{grant}/{quote(path)}", 302)
    match = docs.find_docset(session, found, normalized, version, reader)
    if match is None:
        raise HTTPError(404, f"No documentation for {normalized} {version} on {found.path}.")
    return docs.serve(match[0], path, base)


@bp.post("/<user>/<index>/<project>/<version>/+doc-upload")
def doc_upload(user: str, index: str, project: str, version: str) -> Response:
    """Upload a zip of built HTML docs for this version (the version page's form)."""
    caller = authenticated_user()
    if caller is None:
        return login_redirect()
    found = index_or_404(user, index)
    if not may_upload(found, caller):
        raise HTTPError(
            403, f"The user '{caller.username}' isn't allowed to upload to index '{found.path}'."
        )
    part = request.files.get("content")
    if part is None or not part.filename:
        raise HTTPError(400, "Choose a zip file of the built HTML documentation.")
    docset = docs.store_docs(found, project, version, caller, part)
    flash(f"Documentation of {docset.normalized_name} {docset.version} uploaded.", "info")
    return redirect(version_url(found.path, docset.normalized_name, docset.version), 303)
