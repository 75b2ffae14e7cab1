"""Web forms that change releases: yank and un-yank (PEP 592), delete on volatile indexes,
promote to another stage (app/services/promote.py, as devpi push), project status (PEP 792).

The rules are app/services/releases.py's, as for the JSON API and devpi-client: the index
owner, superusers and the users in `acl_upload` may yank any stage's releases; deleting is
allowed only on `volatile` indexes.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request
from sqlalchemy import select
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app.core.dists import normalize_name
from app.data.db import begin_write, get_session
from app.data.models import Index, Project, User
from app.http.auth import authenticated_user
from app.http.devpi import promote_for_caller
from app.http.errors import HTTPError
from app.http.web.base import bp, index_or_404, index_url, login_redirect, project_url, version_url
from app.services.releases import (
    delete_files,
    has_version,
    may_change,
    may_remove,
    set_yanked,
    version_files,
)
from app.services.status import StatusError, check_status, set_status

MAX_REASON_CHARS = 1000


def _checked(user: str, index: str) -> tuple[Index, User] | Response:
    caller = authenticated_user()
    if caller is None:
        return login_redirect()
    found = index_or_404(user, index)
    if found.is_mirror:
        raise HTTPError(400, f"Index {found.path} is a mirror: its files come from upstream.")
    if not may_change(found, caller):
        raise HTTPError(
            403, f"The user '{caller.username}' may not change releases on {found.path}."
        )
    return found, caller


@bp.post("/<user>/<index>/<project>/<version>/+yank")
def yank(user: str, index: str, project: str, version: str) -> Response:
    """Yank (`action=yank`, with a `reason`) or un-yank (`action=unyank`) a version's files."""
    checked = _checked(user, index)
    if isinstance(checked, Response):
        return checked
    found, _caller = checked
    action = request.form.get("action", "yank")
    if action not in ("yank", "unyank"):
        raise HTTPError(400, "The action must be 'yank' or 'unyank'.")
    reason = (request.form.get("reason") or "").strip()[:MAX_REASON_CHARS] or None
    filename = request.form.get("filename") or None
    session = get_session()
    begin_write(session)
    files = version_files(session, found, project, version, filename=filename)
    set_yanked(files, action == "yank", reason)
    session.commit()
    what = filename or f"{normalize_name(project)} {version}"
    flash(f"{what}: {'yanked' if action == 'yank' else 'no longer yanked'}.", "info")
    return redirect(version_url(found.path, project, version), 303)


@bp.post("/<user>/<index>/<project>/+status")
def project_status(user: str, index: str, project: str) -> Response:
    """Set a project's PEP 792 status (`status`, with a `reason`), as PUT .../+status does."""
    checked = _checked(user, index)
    if isinstance(checked, Response):
        return checked
    found, caller = checked
    try:
        status, reason = check_status(request.form.get("status"), request.form.get("reason"))
    except StatusError as exc:
        raise HTTPError(400, f"Invalid project status: {exc}.") from None
    session = get_session()
    begin_write(session)
    record = session.scalar(
        select(Project).where(
            Project.index_id == found.id, Project.normalized_name == normalize_name(project)
        )
    )
    if record is None:
        raise HTTPError(404, f"Project {normalize_name(project)} is not on index {found.path}.")
    set_status(record, status, reason, caller)
    session.commit()
    flash(f"{record.normalized_name}: status set to {status}.", "info")
    return redirect(project_url(found.path, record.normalized_name), 303)


@bp.post("/<user>/<index>/<project>/<version>/+delete")
def delete_release(user: str, index: str, project: str, version: str) -> Response:
    """Delete one file (`filename`) or a whole version, on volatile indexes only."""
    checked = _checked(user, index)
    if isinstance(checked, Response):
        return checked
    found, caller = checked
    if not may_remove(found, caller):
        raise HTTPError(
            403, f"Index {found.path} is not volatile: released files stay; yank them instead."
        )
    filename = request.form.get("filename") or None
    session = get_session()
    begin_write(session)
    files = version_files(session, found, project, version, filename=filename)
    project_id = files[0].project_id
    is_project_left = delete_files(session, found, files)
    version_left = is_project_left and has_version(session, project_id, version)
    session.commit()
    flash(f"Deleted {', '.join(f.filename for f in files)}.", "info")
    if version_left:
        return redirect(version_url(found.path, project, version), 303)
    if is_project_left:
        return redirect(project_url(found.path, project), 303)
    return redirect(index_url(found.path), 303)


@bp.post("/<user>/<index>/<project>/<version>/+promote")
def promote_release(user: str, index: str, project: str, version: str) -> Response | str:
    """Copy the version's files and docs to the stage named in `target`; list what was copied."""
    if authenticated_user() is None:
        return login_redirect()
    found = index_or_404(user, index)
    target = (request.form.get("target") or "").strip()
    if not target:
        raise HTTPError(400, "Choose the index to promote to.")
    result = promote_for_caller(found, project, version, target)
    return render_template("promoted.html", result=result)
