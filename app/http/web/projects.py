"""A project's and a version's web pages, the refresh button of a mirrored project, and a
version's documentation URLs (viewing and uploading a docs zip)."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from flask import current_app, flash, g, jsonify, redirect, render_template, request, url_for
from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app.core.dists import normalize_name
from app.core.render import render_description
from app.core.upstream import UpstreamError
from app.data.db import get_session
from app.data.models import Index, MirrorPage, Project, Promotion
from app.http.auth import authenticated_user, current_reader, require_user
from app.http.errors import HTTPError, upstream_failed
from app.http.web import advisories as advisory_views  # `advisories` is the service
from app.http.web import docs, pages
from app.http.web.base import (
    bp,
    doc_url,
    index_or_404,
    login_redirect,
    page_number,
    project_url,
    version_url,
    wants_json,
)
from app.http.web.browse import absolute_url, require_read_page, root_url
from app.services import advisories
from app.services.indexes import (
    Reader,
    get_index_by_path,
    may_read,
    readable_order,
    resolution_order,
)
from app.services.indexes_view import ProjectView, project_view
from app.services.mirror_description import mirror_metadata, newest_described
from app.services.promote import promotable_targets, promotions_of
from app.services.releases import may_change, may_upload, refresh_project
from app.services.status import STATUSES

VERSIONS_PER_PAGE = 20  # a mirrored project may have hundreds of versions


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
        root = root_url()
        result = {
            v.version: pages.version_data(
                view.name,
                v,
                metadata.get(v.version),
                root,
                absolute_url(doc_url(found.path, normalized, v.version))
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
        root = root_url()
        link = absolute_url(doc_url(found.path, normalized, row.version)) if has_docs else None
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
