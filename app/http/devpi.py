"""bp: the parts of devpi-server's HTTP API that devpi-client uses, beyond app/http/api.py.

devpi-client (tested with 7.3.0) first asks `GET .../+api` where the server's endpoints are
(login, index, simple index, upload URL) and which features it has; logs in with `POST
/+login` and a JSON body (answered here, routed by app/http/web/admin.py, which owns the URL);
then sends the login token back as `X-Devpi-Auth: base64(USER:TOKEN)` (checked by app/http/auth.py).
It removes releases with DELETE on project, version and `+f` file URLs. devpi's JSON envelope
and how a user is shown are here (app/http/api.py and GET / for `devpi use -l` use them); users,
indexes and their PATCH operations are app/http/api.py's; project and version JSON is app/http/web's
(`+links`). `devpi push NAME==VERSION USER/INDEX` arrives as `PUSH /USER/INDEX` (or a POST of
JSON to the upload URL, which app/http/upload.py hands over) and copies a release with
app/services/promote.py; `promote_for_caller` is that copy as the caller of a request, shared with
app/http/api.py and app/web.

Every response carries the `X-Devpi-*` headers: devpi-client warns about a reply without
`X-Devpi-Api-Version`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from packaging.version import Version
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app import __version__
from app.core.dists import normalize_name
from app.data.db import begin_write, get_session
from app.data.models import DocSet, File, Index, Project, User
from app.http.auth import (
    LOGIN_TOKEN_SECONDS,
    authenticated_user,
    current_reader,
    new_login_token,
    require_user,
    verify_password,
)
from app.http.errors import HTTPError, index_or_404, too_many_logins
from app.services.indexes import Reader, get_index, is_public, may_read
from app.services.indexes_config import index_config
from app.services.promote import (
    EXTERNAL_REFUSAL,
    FileConflict,
    InvalidPromotion,
    Promoted,
    PromoteError,
    PromoteRefused,
    ReleaseNotFound,
    promote,
)
from app.services.releases import (
    delete_files,
    may_change,
    may_remove,
    parse_version,
    shown_bases,
)
from app.services.throttle import LoginThrottled

log = logging.getLogger(__name__)
bp = Blueprint("devpi", __name__)

API_VERSION = "2"  # devpi-client accepts only this X-Devpi-Api-Version
# The devpi-server release whose API this module follows (the local part names us); tools
# that compare versions parse it as PEP 440.
SERVER_VERSION = f"6.20.3+pyshelf.{__version__}"
# Only what is implemented: with this feature devpi-client sends `devpi index NAME key+=value`
# as a list of operations (app/services/indexes_config.py apply_operations) instead of a whole
# config.
# `push-no-docs`/`push-only-docs`: devpi push's --no-docs and --only-docs.
FEATURES = ["server-keyvalue-parsing", "push-no-docs", "push-only-docs"]
PROMOTE_STATUS: dict[type[PromoteError], int] = {
    ReleaseNotFound: 400,  # as devpi: the release named in the body is not there
    InvalidPromotion: 400,
    PromoteRefused: 403,
    FileConflict: 409,  # twine's and devpi's "File already exists"
}
PUSH_KEYS = (":action", "name", "version", "targetindex", "no_docs", "only_docs")
# What devpi-client sends for `pypi:NAME` targets instead of `targetindex`: another server's
# upload URL and the .pypirc credentials (never logged, never used).
EXTERNAL_PUSH_KEY = "posturl"


# --- devpi's JSON: the envelope, users (also app/http/api.py's) -------------------------------


def envelope(kind: str, result: Any, status: int = 200, message: str | None = None) -> Response:
    """devpi's JSON envelope: {"type": ..., "result": ...} (and a "message" for people)."""
    body: dict[str, Any] = {"type": kind, "result": result}
    if message:
        body["message"] = message
    response = jsonify(body)
    response.status_code = status
    return response


def user_info(
    session: Session, user: User, reader: Reader | None = None, *, is_own: bool = True
) -> dict[str, Any]:
    """A user as the API shows it: never the password hash; email and superuser flag only
    when `is_own` (the user or a superuser asks); with a `reader`, only the indexes it may
    read."""
    indexes = session.scalars(select(Index).where(Index.owner_id == user.id)).all()
    if reader is not None:
        indexes = [i for i in indexes if may_read(i, reader)]
    private = {"email": user.email, "is_superuser": user.is_superuser} if is_own else {}
    return {
        "username": user.username,
        **private,
        "indexes": {
            i.name: index_config(
                i, bases=None if reader is None else shown_bases(session, i, reader)
            )
            for i in indexes
        },
    }


def listing_reader(session: Session) -> Reader | None:
    """The caller, to filter index listings by; None while every index is public (no
    credentials need checking then)."""
    if all(is_public(i) for i in session.scalars(select(Index))):
        return None
    return current_reader()


def is_own(user: User) -> bool:
    """Whether the caller is `user` or a superuser (who may see the email and superuser flag)."""
    caller = authenticated_user()
    return caller is not None and (caller.is_superuser or caller.id == user.id)


def users_json() -> Response:
    """Every user with the indexes the caller may read, by name (GET / for API clients:
    `devpi use -l`)."""
    session = get_session()
    reader = listing_reader(session)
    users = session.scalars(select(User).order_by(User.username)).all()
    return envelope(
        "list:userconfig",
        {u.username: user_info(session, u, reader, is_own=is_own(u)) for u in users},
    )


def message(status: int, text: str) -> Response:
    """A devpi reply that carries only a message, as its DELETEs answer."""
    response = jsonify({"message": text})
    response.status_code = status
    return response


def _root_url() -> str:
    return request.host_url.rstrip("/") + request.script_root


def auth_status() -> list[Any]:
    """devpi's `authstatus`: ["ok", USER, []], ["expired", USER, []] or ["noauth", "", []]."""
    user = authenticated_user()
    if user is not None:
        return ["ok", user.username, []]
    if g.get("login_expired_for"):  # devpi-client then forgets the stored login
        return ["expired", g.login_expired_for, []]
    return ["noauth", "", []]


@bp.get("/+api")
@bp.get("/<user>/+api")
@bp.get("/<user>/<index>/+api")
def apiconfig(user: str | None = None, index: str | None = None) -> Response:
    """Where devpi-client finds the login, the index, its simple page and its upload URL."""
    root = _root_url()
    result: dict[str, Any] = {
        "login": f"{root}/+login",
        "authstatus": auth_status(),
        "features": FEATURES,
    }
    if user is not None and index is not None:
        found = get_index(get_session(), user, index)
        if found is None:
            raise HTTPError(404, f"Index {user}/{index} does not exist.")
        result["index"] = f"{root}/{found.path}"
        result["simpleindex"] = f"{root}/{found.path}/+simple/"
        if not found.is_mirror:  # devpi-client refuses to upload without it
            result["pypisubmit"] = f"{root}/{found.path}/"
    elif (
        user is not None
        and get_session().scalar(select(User.id).where(User.username == user)) is None
    ):
        raise HTTPError(404, f"User {user} does not exist.")
    return jsonify({"type": "apiconfig", "result": result})


def json_login() -> Response:
    """`POST /+login` with {"user", "password"}: a login token for X-Devpi-Auth.

    The password check is the throttled one of every login; the token is signed (any worker
    accepts it), expires after LOGIN_TOKEN_SECONDS and ends when the password changes.
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise HTTPError(400, 'Send a JSON object: {"user": NAME, "password": PASSWORD}.')
    username, password = body.get("user"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise HTTPError(400, 'Bad request: no user/password specified ("user", "password").')
    try:
        user = verify_password(username[:64], password, request.remote_addr)
    except LoginThrottled as exc:
        raise too_many_logins(exc.retry_after_seconds) from None
    if user is None:
        raise HTTPError(401, f"User {username[:64]!r} could not be authenticated.")
    token = new_login_token(user)
    log.info("devpi login of %s", user.username)
    response = jsonify(
        {
            "type": "proxyauth",
            "result": {"password": token, "expiration": LOGIN_TOKEN_SECONDS},
            "message": "login successful",
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# --- removing releases -----------------------------------------------------------------------


def _removable_index(user: str, index: str) -> tuple[Index, User]:
    """The stage to delete from, if the caller may: volatile, or `?force` by a superuser."""
    caller = require_user()
    session = get_session()
    begin_write(session)
    found = index_or_404(user, index)
    if found.is_mirror:
        raise HTTPError(403, f"Index {found.path} is a mirror: its files come from upstream.")
    if not may_change(found, caller):
        raise HTTPError(
            403, f"The user '{caller.username}' may not delete releases on {found.path}."
        )
    if not may_remove(found, caller, force="force" in request.args):
        if "force" not in request.args:
            raise HTTPError(
                403,
                f"Index {found.path} is not volatile: released files stay (yank them instead; "
                "a superuser may delete with ?force, devpi remove --force).",
            )
        raise HTTPError(403, f"Only superusers may force deletions on {found.path}.")
    return found, caller


def _project_or_404(index: Index, project: str) -> Project:
    found = get_session().scalar(
        select(Project).where(
            Project.index_id == index.id, Project.normalized_name == normalize_name(project)
        )
    )
    if found is None:
        raise HTTPError(404, f"Project {normalize_name(project)} is not on index {index.path}.")
    return found


@bp.delete("/<user>/<index>/<project>")
@bp.delete("/<user>/<index>/<project>/")
def delete_project(user: str, index: str, project: str) -> Response:
    """Delete a project with all its files and docs (`devpi remove NAME`)."""
    found, caller = _removable_index(user, index)
    record = _project_or_404(found, project)
    session = get_session()
    session.execute(
        delete(DocSet).where(
            DocSet.index_id == found.id, DocSet.normalized_name == record.normalized_name
        )
    )
    session.delete(record)  # its files go with it (blobs stay: other indexes may share them)
    session.commit()
    log.info(
        "deleted project %s from %s (by %s)", record.normalized_name, found.path, caller.username
    )
    return message(200, f"Project {record.normalized_name} deleted from {found.path}.")


@bp.delete("/<user>/<index>/<project>/<version>")
@bp.delete("/<user>/<index>/<project>/<version>/")
def delete_version(user: str, index: str, project: str, version: str) -> Response:
    """Delete every file and the docs of one version (`devpi remove NAME==VERSION`)."""
    found, caller = _removable_index(user, index)
    record = _project_or_404(found, project)
    wanted = parse_version(version)
    session = get_session()
    files = [
        f
        for f in session.scalars(select(File).where(File.project_id == record.id))
        if Version(f.version) == wanted
    ]
    docs = session.scalar(
        select(DocSet).where(
            DocSet.index_id == found.id,
            DocSet.normalized_name == record.normalized_name,
            DocSet.version == str(wanted),
        )
    )
    if not files and docs is None:
        raise HTTPError(404, f"{record.normalized_name} {version} is not on index {found.path}.")
    if files:
        delete_files(session, found, files)  # the version's docs go with its last file
    else:
        session.delete(docs)
    session.commit()
    log.info(
        "deleted %s %s from %s (by %s)", record.normalized_name, wanted, found.path, caller.username
    )
    return message(200, f"{record.normalized_name} {wanted} deleted from {found.path}.")


@bp.delete("/<user>/<index>/+f/<sha256>/<path:filename>")
def delete_file(user: str, index: str, sha256: str, filename: str) -> Response:
    """Delete one release file by its URL (`devpi remove URL`)."""
    found, caller = _removable_index(user, index)
    session = get_session()
    record = session.scalar(
        select(File)
        .join(Project)
        .where(Project.index_id == found.id, File.sha256 == sha256, File.filename == filename)
    )
    if record is None:
        raise HTTPError(404, f"No such file on {found.path}: {filename[:200]}")
    delete_files(session, found, [record])
    session.commit()
    log.info("deleted %s from %s (by %s)", filename, found.path, caller.username)
    return message(200, f"{filename} deleted from {found.path}.")


# --- promoting releases (devpi push) ---------------------------------------------------------


def promote_for_caller(
    source: Index,
    name: str,
    version: str,
    target: str,
    *,
    with_files: bool = True,
    with_docs: bool = True,
) -> Promoted:
    """Promote a release from `source` as this request's caller (app/services/promote.py), commit
    and log it; its refusals become HTTP errors."""
    user = require_user()
    token = g.get("auth_token")
    token_index = None
    if token is not None and token.index_id is not None:  # may write to its own index only
        token_index = token.index.path if token.index is not None else ""
    session = get_session()
    try:
        result = promote(
            session,
            source,
            name,
            version,
            target,
            user=user,
            reader=current_reader(),
            token_index=token_index,
            with_files=with_files,
            with_docs=with_docs,
            blobs=current_app.extensions["pyshelf.storage"],
        )
    except PromoteError as exc:
        session.rollback()
        raise HTTPError(PROMOTE_STATUS[type(exc)], str(exc)) from None
    session.commit()
    what = "nothing to copy" if result.is_noop else ", ".join(result.copied) or "docs"
    log.info(
        "promote %s %s from %s to %s by %s: %s",
        result.normalized_name,
        result.version,
        result.source,
        result.target,
        result.promoted_by,
        what,
        extra={
            "project": result.normalized_name,
            "release_version": result.version,
            "source_index": result.source,
            "target_index": result.target,
            "promoted_by": result.promoted_by,
            "copied": result.copied,
            "docs": result.docs,
        },
    )
    return result


def action_log(result: Promoted) -> list[list[Any]]:
    """devpi's `actionlog` of a push: one line per file and the docs; devpi-client prints them."""
    actions: list[list[Any]] = []
    if not result.is_noop:
        actions.append([200, "register", result.name, result.version, "->", result.target])
    actions += [[200, "store_releasefile", result.path(f)] for f in result.copied]
    actions += [[200, "unchanged_releasefile", result.path(f)] for f in result.unchanged]
    if result.docs is not None:
        kind = "store_doczip" if result.docs == "copied" else "unchanged_doczip"
        actions.append([200, kind, result.name, result.version, "->", result.target])
    return actions


def _push_flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise HTTPError(400, f"'{key}' must be true or false.")
    return value


def push_release(source: Index) -> Response:
    """devpi push: copy a release of `source` to another index of this server.

    The body is devpi-client's: {"name", "version", "targetindex": "USER/INDEX"} with
    optional "no_docs"/"only_docs"; a push to another server (its "posturl") is refused.
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise HTTPError(
            400,
            'Send a JSON object: {"name": NAME, "version": VERSION, "targetindex": "USER/INDEX"}.',
        )
    if "targetindex" not in body and EXTERNAL_PUSH_KEY in body:
        raise HTTPError(400, EXTERNAL_REFUSAL)  # the body holds a password: never echo it
    if body.get(":action", "push") != "push":
        raise HTTPError(400, f"Unknown ':action' {str(body[':action'])[:50]!r}: expected 'push'.")
    unknown = sorted(str(key)[:50] for key in body if key not in PUSH_KEYS)
    if unknown:
        raise HTTPError(
            400, f"Unknown push option(s): {', '.join(unknown)}; known: {', '.join(PUSH_KEYS)}."
        )
    name, version, target = body.get("name"), body.get("version"), body.get("targetindex")
    if not all(isinstance(v, str) and v for v in (name, version, target)):
        raise HTTPError(
            400, 'A push needs "name", "version" and "targetindex" ("USER/INDEX") as strings.'
        )
    no_docs, only_docs = _push_flag(body, "no_docs"), _push_flag(body, "only_docs")
    if no_docs and only_docs:
        raise HTTPError(400, "Use either 'no_docs' or 'only_docs', not both.")
    result = promote_for_caller(
        source,
        str(name),
        str(version),
        str(target),
        with_files=not only_docs,
        with_docs=not no_docs,
    )
    summary = (
        f"{result.target} has {result.normalized_name} {result.version} already: nothing copied."
        if result.is_noop
        else f"{result.normalized_name} {result.version} copied from {result.source} to "
        f"{result.target}."
    )
    return envelope("actionlog", action_log(result), message=summary)


@bp.route("/<user>/<index>", methods=["PUSH"])
@bp.route("/<user>/<index>/", methods=["PUSH"])
def push(user: str, index: str) -> Response:
    """`devpi push NAME==VERSION USER/INDEX`: copy a release to another stage (devpi-client
    sends the PUSH method; a POST of JSON to the upload URL comes here too)."""
    found = get_index(get_session(), user, index)
    if found is None:
        raise HTTPError(404, f"Index {user}/{index} does not exist.")
    require_user()
    return push_release(found)


# --- headers -----------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Add the X-Devpi-* headers to every response."""
    # A stable id of this server (all workers agree), derived without revealing the secret.
    key = app.config["SECRET_KEY"].encode("utf-8")
    uuid = hmac.new(key, b"X-Devpi-Uuid", hashlib.sha256).hexdigest()[:32]
    headers = {
        "X-Devpi-Api-Version": API_VERSION,
        "X-Devpi-Server-Version": SERVER_VERSION,
        "X-Devpi-Uuid": uuid,
    }
    app.extensions["pyshelf.devpi_headers"] = headers  # also sent by web.hook_headers' users

    @app.after_request
    def _devpi_headers(response: Response) -> Response:
        response.headers.update(headers)
        return response
