"""The browsing pages of the web UI: the home page, a user's page and an index's page, with
the read check every page does first (a browser without credentials goes to the login page)."""

from __future__ import annotations

import dataclasses

from flask import redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app.data.db import get_session
from app.data.models import Index, User
from app.http.auth import authenticated_user, current_reader, require_read
from app.http.devpi import users_json
from app.http.errors import HTTPError
from app.http.web import pages
from app.http.web.base import bp, current_location, index_or_404, page_number, wants_json
from app.services.indexes import Reader, acl_read_of, get_index_by_path, is_public, may_read
from app.services.releases import shown_bases


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


def root_url() -> str:
    """This site's base URL, with the script root (a proxy's path prefix)."""
    return request.host_url.rstrip("/") + request.script_root


def absolute_url(path: str) -> str:
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
    base = root_url()
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
