"""bp: JSON management of users, tokens, indexes, yanks and project status under /USER and
/USER/INDEX."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app.core.config import Settings
from app.core.dists import normalize_name
from app.data.db import begin_write, get_session
from app.data.models import Index, Project, User
from app.http.auth import new_token, require_read, require_user
from app.http.devpi import envelope, is_own, listing_reader, promote_for_caller, user_info
from app.http.errors import HTTPError, index_or_404
from app.http.web.base import wants_json
from app.http.web.browse import index_page, user_page
from app.services.indexes import get_index_by_path
from app.services.indexes_config import (
    IndexConfigError,
    IndexPermissionError,
    apply_config,
    apply_operations,
    create_index,
    index_config,
)
from app.services.passwords import MIN_PASSWORD_CHARS, USERNAME_RE, hash_password
from app.services.promote import Promoted
from app.services.releases import delete_index as delete_index_and_contents
from app.services.releases import (
    delete_owned_indexes,
    may_change,
    may_configure,
    set_yanked,
    shown_bases,
    version_files,
)
from app.services.status import ACTIVE, StatusError, check_status, set_status

bp = Blueprint("api", __name__)


def _json_body(*, allow_list: bool = False) -> Any:
    if not request.data:
        return {}
    data = request.get_json(silent=True)
    if allow_list and isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise HTTPError(400, "The request body must be a JSON object.")
    return data


def _user_or_404(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise HTTPError(404, f"User {username} does not exist.")
    return user


def _superuser_or_403(caller: User, action: str) -> None:
    if not caller.is_superuser:
        raise HTTPError(403, f"Only superusers may {action}.")


def _check_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise HTTPError(400, f"A password of at least {MIN_PASSWORD_CHARS} characters is required.")
    return password


def _check_email(email: Any) -> str | None:
    if email is not None and (not isinstance(email, str) or len(email) > 255):
        raise HTTPError(400, "The email must be a string of at most 255 characters, or null.")
    return email


# --- users ---------------------------------------------------------------------------------


@bp.get("/<user>")
@bp.get("/<user>/")
def get_user(user: str) -> Response | str:
    """A user and their indexes; browsers (Accept prefers text/html) get the web page."""
    if not wants_json():
        return user_page(user)
    session = get_session()
    found = _user_or_404(session, user)
    reader = listing_reader(session)
    return envelope("userconfig", user_info(session, found, reader, is_own=is_own(found)))


@bp.put("/<user>")
@bp.put("/<user>/")
def create_user(user: str) -> Response:
    """Create a user (superusers only): {"password": ..., "email": ..., "superuser": false}."""
    caller = require_user()
    _superuser_or_403(caller, "create users")
    if not USERNAME_RE.match(user):
        raise HTTPError(400, f"Invalid username {user!r}: use letters, digits, '.', '_' or '-'.")
    body = _json_body()
    session = get_session()
    begin_write(session)
    if session.scalar(select(User).where(User.username == user)) is not None:
        raise HTTPError(409, f"User {user} already exists.")
    new = User(
        username=user,
        password_hash=hash_password(_check_password(body.get("password"))),
        email=_check_email(body.get("email")),
        is_superuser=bool(body.get("superuser", False)),
    )
    session.add(new)
    session.commit()
    return envelope("userconfig", user_info(session, new), 201)


@bp.patch("/<user>")
@bp.patch("/<user>/")
def modify_user(user: str) -> Response:
    """Change a user's password or email (the user or a superuser); superuser flag: superusers."""
    caller = require_user()
    session = get_session()
    begin_write(session)
    target = _user_or_404(session, user)
    if caller.id != target.id and not caller.is_superuser:
        raise HTTPError(403, f"Only {user} or a superuser may change {user}.")
    body = _json_body()
    if "is_superuser" in body:  # devpi-client sends back the whole GET result, changed
        body.setdefault("superuser", body.pop("is_superuser"))
        if body["superuser"] == target.is_superuser:
            del body["superuser"]
    unknown = set(body) - {"password", "email", "superuser"}
    if unknown:
        raise HTTPError(400, f"Unknown user setting(s): {', '.join(sorted(unknown))}.")
    if "password" in body:
        target.password_hash = hash_password(_check_password(body["password"]))
    if "email" in body:
        target.email = _check_email(body["email"])
    if "superuser" in body:
        _superuser_or_403(caller, "grant or revoke superuser rights")
        target.is_superuser = bool(body["superuser"])
    session.commit()
    return envelope("userconfig", user_info(session, target))


@bp.delete("/<user>")
@bp.delete("/<user>/")
def delete_user(user: str) -> Response:
    """Delete a user with their indexes and tokens (superusers only, never yourself)."""
    caller = require_user()
    _superuser_or_403(caller, "delete users")
    session = get_session()
    begin_write(session)
    target = _user_or_404(session, user)
    if target.id == caller.id:
        raise HTTPError(403, "You cannot delete yourself.")
    # Deleting the user deletes their indexes: refuse, as for DELETE /USER/INDEX, when others
    # build on one (a dangling base would silently reattach to whoever recreates that path).
    delete_owned_indexes(session, target)  # InUse: 409
    session.delete(target)
    session.commit()
    return envelope("userconfig", {"deleted": user})


@bp.post("/<user>/+tokens")
def create_token(user: str) -> Response:
    """Create an API token for `user` (the user or a superuser); the secret is shown once.

    `{"index": "USER/NAME"}` limits the token to that one index.
    """
    caller = require_user()
    session = get_session()
    begin_write(session)
    target = _user_or_404(session, user)
    if caller.id != target.id and not caller.is_superuser:
        raise HTTPError(403, f"Only {user} or a superuser may create tokens for {user}.")
    body = _json_body()
    scope = None
    if body.get("index"):
        scope = get_index_by_path(session, str(body["index"]))
        if scope is None:
            raise HTTPError(400, f"Index {body['index']} does not exist.")
    secret = new_token(session, target, str(body.get("description", "")), scope)
    session.commit()
    result = {"username": "__token__", "token": secret}
    if scope is not None:
        result["index"] = scope.path
    return envelope("token", result, 201)


# --- indexes -------------------------------------------------------------------------------


@bp.get("/<user>/<index>")
@bp.get("/<user>/<index>/")
def get_index_config(user: str, index: str) -> Response | str:
    """An index's settings and project names (not with `?no_projects`); browsers (preferring
    text/html) get the web page."""
    if not wants_json():
        return index_page(user, index)
    session = get_session()
    found = index_or_404(user, index)
    reader = require_read(found)
    bases = None if reader is None else shown_bases(session, found, reader)
    result = index_config(found, bases=bases)
    if "no_projects" not in request.args:
        result["projects"] = sorted(
            session.scalars(select(Project.name).where(Project.index_id == found.id))
        )
    return envelope("indexconfig", result)


def _settings() -> Settings:
    return current_app.config["PYSHELF_SETTINGS"]


@bp.put("/<user>/<index>")
@bp.put("/<user>/<index>/")
def create_index_view(user: str, index: str) -> Response:
    """Create an index from a JSON body of settings (the owner or a superuser)."""
    caller = require_user()
    session = get_session()
    begin_write(session)
    owner = _user_or_404(session, user)
    if caller.id != owner.id and not caller.is_superuser:
        raise HTTPError(403, f"Only {user} or a superuser may create indexes for {user}.")
    try:
        created = create_index(
            session,
            owner,
            index,
            _json_body(),
            user=caller,
            users_may_mirror=_settings().users_may_mirror,
        )
    except IndexPermissionError as exc:
        session.rollback()
        raise HTTPError(403, f"Cannot create {user}/{index}: {exc}.") from None
    except IndexConfigError as exc:
        session.rollback()
        status = 409 if "already exists" in str(exc) else 400
        raise HTTPError(status, f"Cannot create {user}/{index}: {exc}.") from None
    session.commit()
    return envelope("indexconfig", index_config(created), 201)


@bp.patch("/<user>/<index>")
@bp.patch("/<user>/<index>/")
def modify_index(user: str, index: str) -> Response:
    """Change some settings of an index (the owner or a superuser).

    The body is an object of settings (devpi's whole `indexconfig`, as GET returns it, is
    fine) or a list of devpi's operations: ["key=value", "key+=value", "key-=value", "key-="].
    """
    caller = require_user()
    session = get_session()
    begin_write(session)
    found = index_or_404(user, index)
    if not may_configure(found, caller):
        raise HTTPError(403, f"Only {user} or a superuser may configure {found.path}.")
    body = _json_body(allow_list=True)
    current = index_config(found)
    try:
        if isinstance(body, list):
            body = apply_operations(current, body)
        elif body.get("type") == "indexconfig" and isinstance(body.get("result"), dict):
            body = body["result"]
        # What comes back unchanged is not a change (a masked mirror_url, "projects").
        changes = {k: v for k, v in body.items() if k != "projects" and current.get(k) != v}
        apply_config(
            session, found, changes, user=caller, users_may_mirror=_settings().users_may_mirror
        )
    except IndexPermissionError as exc:
        session.rollback()
        raise HTTPError(403, f"Cannot change {found.path}: {exc}.") from None
    except IndexConfigError as exc:
        session.rollback()
        raise HTTPError(400, f"Cannot change {found.path}: {exc}.") from None
    session.commit()
    return envelope("indexconfig", index_config(found))


@bp.delete("/<user>/<index>")
@bp.delete("/<user>/<index>/")
def delete_index(user: str, index: str) -> Response:
    """Delete an index and its files (the owner or a superuser; refused while others use it)."""
    caller = require_user()
    session = get_session()
    begin_write(session)
    found = index_or_404(user, index)
    if not may_configure(found, caller):
        raise HTTPError(403, f"Only {user} or a superuser may delete {found.path}.")
    delete_index_and_contents(session, found)  # InUse: 409
    session.commit()
    return envelope("indexconfig", {"deleted": found.path})


@bp.patch("/<user>/<index>/<project>/<version>")
@bp.patch("/<user>/<index>/<project>/<version>/")
def yank_version(user: str, index: str, project: str, version: str) -> Response:
    """Yank or un-yank every file of a version: {"yanked": true, "reason": "..."} (PEP 592)."""
    caller = require_user()
    session = get_session()
    begin_write(session)
    found = index_or_404(user, index)
    if not may_change(found, caller):
        raise HTTPError(403, f"The user '{caller.username}' may not yank on {found.path}.")
    body = _json_body()
    if not isinstance(body.get("yanked"), bool):
        raise HTTPError(400, 'Send {"yanked": true|false, "reason": "..."}.')
    # The JSON API has always echoed the whole bad version (errors.py cuts the reason).
    files = version_files(session, found, project, version, shown_chars=None)
    reason = str(body.get("reason") or "").strip() or None
    set_yanked(files, body["yanked"], reason)
    session.commit()
    return envelope(
        "versionconfig", {"files": [f.filename for f in files], "yanked": body["yanked"]}
    )


# --- project status (PEP 792) ------------------------------------------------------------------


def _stage_project_or_404(session: Session, index: Index, project: str) -> Project:
    record = session.scalar(
        select(Project).where(
            Project.index_id == index.id, Project.normalized_name == normalize_name(project)
        )
    )
    if record is None:
        raise HTTPError(404, f"Project {normalize_name(project)} is not on index {index.path}.")
    return record


def _status_json(record: Project) -> dict[str, Any]:
    return {
        "status": record.status or ACTIVE,
        "reason": record.status_reason,
        "set_by": record.status_by,
        "set_at": record.status_at.isoformat() + "Z" if record.status_at else None,
    }


@bp.get("/<user>/<index>/<project>/+status")
def get_project_status(user: str, index: str, project: str) -> Response:
    """A stage project's PEP 792 status, reason, and who set it when (active if never set)."""
    session = get_session()
    found = index_or_404(user, index)
    require_read(found, with_bases=False)
    return envelope("projectstatus", _status_json(_stage_project_or_404(session, found, project)))


@bp.put("/<user>/<index>/<project>/+status")
def set_project_status(user: str, index: str, project: str) -> Response:
    """Set a stage project's PEP 792 status: {"status": "quarantined", "reason": "..."}; owner,
    superusers and uploaders only (a token limited to an index may not)."""
    caller = require_user()
    session = get_session()
    begin_write(session)
    found = index_or_404(user, index)
    if not may_change(found, caller):
        raise HTTPError(
            403, f"The user '{caller.username}' may not set project status on {found.path}."
        )
    if found.is_mirror:
        raise HTTPError(
            400, f"Index {found.path} is a mirror: its project status comes from upstream."
        )
    record = _stage_project_or_404(session, found, project)
    body = _json_body()
    try:
        status, reason = check_status(body.get("status"), body.get("reason"))
    except StatusError as exc:
        raise HTTPError(400, f"Invalid project status: {exc}.") from None
    set_status(record, status, reason, caller)
    session.commit()
    return envelope("projectstatus", _status_json(record))


# --- promoting releases ------------------------------------------------------------------------


def promotion_json(result: Promoted) -> dict[str, Any]:
    """A promotion as the API answers it: what was copied, what the target had already."""
    return {
        "name": result.name,
        "version": result.version,
        "source": result.source,
        "target": result.target,
        "copied": result.copied,
        "unchanged": result.unchanged,
        "docs": result.docs,
        "promoted_by": result.promoted_by,
        "promoted_at": result.promoted_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@bp.post("/<user>/<index>/+promote")
def promote_release(user: str, index: str) -> Response:
    """Copy a release's files and docs to another stage (the JSON twin of devpi push):
    {"name": NAME, "version": VERSION, "target": "USER/INDEX"}."""
    require_user()
    found = index_or_404(user, index)
    body = _json_body()
    unknown = sorted(set(body) - {"name", "version", "target"})
    if unknown:
        raise HTTPError(400, f"Unknown promote setting(s): {', '.join(unknown)[:200]}.")
    name, version, target = body.get("name"), body.get("version"), body.get("target")
    if not all(isinstance(v, str) and v for v in (name, version, target)):
        raise HTTPError(400, 'Send {"name": NAME, "version": VERSION, "target": "USER/INDEX"}.')
    result = promote_for_caller(found, name, version, target)
    return envelope("promotion", promotion_json(result))
