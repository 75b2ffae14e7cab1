"""Web forms for people: login and logout, the account page (password, API tokens), and the
superusers' pages for users and indexes, with the same rules as the JSON API (app/http/api.py)."""

from __future__ import annotations

from typing import Any

from flask import (
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from werkzeug.wrappers import Response  # what redirect() returns: Flask's is a subclass

from app.core.upstream import mask_url
from app.data.db import begin_write, get_session
from app.data.models import Index, Token, User
from app.http.auth import (
    authenticated_user,
    bind_session,
    end_session,
    new_token,
    start_session,
    verify_password,
)
from app.http.devpi import json_login
from app.http.errors import HTTPError
from app.http.web.base import back, bp, index_or_404, index_url, login_redirect, safe_next
from app.http.web.pages import all_indexes
from app.services.indexes import Reader, get_index_by_path, is_public, may_read
from app.services.indexes_config import (
    IndexConfigError,
    IndexPermissionError,
    apply_config,
    create_index,
    may_set_mirror_url,
)
from app.services.passwords import MIN_PASSWORD_CHARS, USERNAME_RE, hash_password
from app.services.releases import InUse, delete_owned_indexes, may_configure, may_upload
from app.services.releases import delete_index as delete_index_and_contents
from app.services.throttle import LoginThrottled

MAX_DESCRIPTION_CHARS = 255


# --- login and logout ------------------------------------------------------------------------


@bp.route("/+login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int, dict[str, str]]:
    """The login form; a successful login goes back to `next` (a path on this site)."""
    if request.method == "POST" and request.is_json:  # devpi-client: {"user", "password"}
        return json_login()
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", next=target, username="")
    username = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    if not username or not password:
        return render_template(
            "login.html", next=target, username=username, error="Enter a username and password."
        )
    try:
        user = verify_password(username, password, request.remote_addr)
    except LoginThrottled as exc:
        wait = exc.retry_after_seconds
        page = render_template(
            "login.html", next=target, username=username, retry_after=wait, error=None
        )
        return page, 429, {"Retry-After": str(wait)}
    if user is None:
        return render_template(
            "login.html", next=target, username=username, error="Invalid username or password."
        )
    start_session(user)
    return redirect(target, 303)


@bp.post("/+logout")
def logout() -> Response:
    """Log out, ending the session on the server too (a POST with the CSRF token, so other
    sites cannot log you out)."""
    end_session()
    return redirect(url_for("web.home"), 303)


# --- the account page ------------------------------------------------------------------------


def _token_indexes(user: User) -> list[Index]:
    """Indexes a token of `user` may be limited to: stages the user may upload to or
    configure, and indexes that are not public but the user may read (a read-only token)."""
    return [
        row.index
        for row in all_indexes(get_session())
        if (
            not row.index.is_mirror
            and (may_upload(row.index, user) or may_configure(row.index, user))
        )
        or (not is_public(row.index) and may_read(row.index, Reader(user)))
    ]


def _account_page(user: User, status: int = 200, **extra: Any) -> tuple[str, int]:
    db = get_session()
    tokens = db.scalars(
        select(Token).where(Token.user_id == user.id).order_by(Token.created_at, Token.id)
    ).all()
    own = [row for row in all_indexes(db) if row.index.owner_id == user.id]
    page = render_template(
        "account.html",
        user=user,
        tokens=tokens,
        token_indexes=_token_indexes(user),
        own_indexes=own,
        all_paths=[row.index.path for row in all_indexes(db) if may_read(row.index, Reader(user))],
        min_password_chars=MIN_PASSWORD_CHARS,
        **extra,
    )
    return page, status


@bp.get("/+account")
def account() -> Response | tuple[str, int]:
    """Your account: change the password, create and revoke API tokens, your indexes."""
    user = authenticated_user()
    if user is None:
        return login_redirect()
    return _account_page(user)


@bp.post("/+account/password")
def change_password() -> Response | tuple[str, int]:
    """Change your own password (the current one is checked, and throttled like logins)."""
    user = authenticated_user()
    if user is None:
        return login_redirect()
    current = request.form.get("current_password") or ""
    new = request.form.get("new_password") or ""
    try:
        ok = verify_password(user.username, current, request.remote_addr) is not None
    except LoginThrottled as exc:
        error = f"Too many failed attempts; try again in {exc.retry_after_seconds} seconds."
        return _account_page(user, 429, password_error=error)
    if not ok:
        return _account_page(user, 400, password_error="The current password is wrong.")  # noqa: S106
    if len(new) < MIN_PASSWORD_CHARS:
        error = f"The new password needs at least {MIN_PASSWORD_CHARS} characters."
        return _account_page(user, 400, password_error=error)
    if new != (request.form.get("new_password2") or ""):
        return _account_page(user, 400, password_error="The two new passwords differ.")  # noqa: S106
    db = get_session()
    begin_write(db)
    target = db.get(User, user.id)
    assert target is not None
    target.password_hash = hash_password(new)
    db.commit()
    bind_session(target)  # this session goes on; every other one of this user ends
    flash("Password changed.", "info")
    return redirect(url_for("web.account"), 303)


@bp.post("/+account/tokens")
def create_token() -> Response | tuple[str, int]:
    """Create an API token, optionally limited to one index; its secret is shown once."""
    user = authenticated_user()
    if user is None:
        return login_redirect()
    description = (request.form.get("description") or "").strip()[:MAX_DESCRIPTION_CHARS]
    scope_path = (request.form.get("index") or "").strip()
    db = get_session()
    begin_write(db)
    scope = None
    if scope_path:
        scope = get_index_by_path(db, scope_path)
        if scope is None or scope.path not in {i.path for i in _token_indexes(user)}:
            db.rollback()
            error = (
                f"You cannot limit a token to {scope_path}: upload rights are needed there "
                "(or read rights, if it is not public)."
            )
            return _account_page(user, 400, token_error=error)
    secret = new_token(db, user, description, scope)
    db.commit()
    # Rendered, not flashed: the secret must not travel in the (signed, readable) session cookie.
    return _account_page(user, 201, new_token=secret, new_token_scope=scope_path or None)


@bp.post("/+account/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int) -> Response:
    """Revoke (delete) one of your tokens."""
    user = authenticated_user()
    if user is None:
        return login_redirect()
    db = get_session()
    begin_write(db)
    token = db.get(Token, token_id)
    if token is None or (token.user_id != user.id and not user.is_superuser):
        raise HTTPError(404, f"No token {token_id} of yours.")
    db.delete(token)
    db.commit()
    flash(f"Token {token.description or token_id} revoked.", "info")
    return redirect(url_for("web.account"), 303)


# --- superusers: users -----------------------------------------------------------------------


def _superuser() -> User | Response:
    user = authenticated_user()
    if user is None:
        return login_redirect()
    if not user.is_superuser:
        raise HTTPError(403, "Only superusers may manage users and indexes.")
    return user


@bp.get("/+admin/")
def admin_home() -> Response:
    """The admin pages start with the users."""
    return redirect(url_for("web.admin_users"))


@bp.get("/+admin/users")
def admin_users() -> Response | str:
    """Users: create, reset passwords, delete (superusers only)."""
    user = _superuser()
    if isinstance(user, Response):
        return user
    db = get_session()
    users = db.scalars(select(User).order_by(User.username)).all()
    return render_template(
        "admin_users.html", users=users, me=user, min_password_chars=MIN_PASSWORD_CHARS
    )


@bp.post("/+admin/users")
def admin_create_user() -> Response:
    """Create a user (as PUT /USER)."""
    caller = _superuser()
    if isinstance(caller, Response):
        return caller
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    email = (request.form.get("email") or "").strip()[:255] or None
    if not USERNAME_RE.match(username):
        flash(f"Invalid username {username!r}: use letters, digits, '.', '_' or '-'.", "error")
    elif len(password) < MIN_PASSWORD_CHARS:
        flash(f"A password of at least {MIN_PASSWORD_CHARS} characters is required.", "error")
    else:
        db = get_session()
        begin_write(db)
        if db.scalar(select(User).where(User.username == username)) is not None:
            db.rollback()
            flash(f"User {username} already exists.", "error")
        else:
            db.add(
                User(
                    username=username,
                    password_hash=hash_password(password),
                    email=email,
                    is_superuser=bool(request.form.get("superuser")),
                )
            )
            db.commit()
            flash(f"User {username} created.", "info")
    return redirect(url_for("web.admin_users"), 303)


def _user_or_404(username: str) -> User:
    user = get_session().scalar(select(User).where(User.username == username))
    if user is None:
        raise HTTPError(404, f"User {username} does not exist.")
    return user


@bp.post("/+admin/users/<username>/password")
def admin_reset_password(username: str) -> Response:
    """Set a user's password (as PATCH /USER)."""
    caller = _superuser()
    if isinstance(caller, Response):
        return caller
    password = request.form.get("password") or ""
    if len(password) < MIN_PASSWORD_CHARS:
        flash(f"A password of at least {MIN_PASSWORD_CHARS} characters is required.", "error")
        return redirect(url_for("web.admin_users"), 303)
    db = get_session()
    begin_write(db)
    target = _user_or_404(username)
    target.password_hash = hash_password(password)
    db.commit()
    flash(f"Password of {username} changed.", "info")
    return redirect(url_for("web.admin_users"), 303)


@bp.post("/+admin/users/<username>/delete")
def admin_delete_user(username: str) -> Response:
    """Delete a user with their indexes and tokens (as DELETE /USER)."""
    caller = _superuser()
    if isinstance(caller, Response):
        return caller
    db = get_session()
    begin_write(db)
    target = _user_or_404(username)
    if target.id == caller.id:
        flash("You cannot delete yourself.", "error")
    else:
        try:
            delete_owned_indexes(db, target)
        except InUse as exc:
            flash(f"Cannot delete {username}: {exc}", "error")
        else:
            db.delete(target)
            flash(f"User {username} deleted.", "info")
    db.commit()
    return redirect(url_for("web.admin_users"), 303)


# --- indexes ---------------------------------------------------------------------------------


@bp.get("/+admin/indexes")
def admin_indexes() -> Response | str:
    """Indexes: create, edit, delete (superusers only; owners edit theirs from the index page)."""
    user = _superuser()
    if isinstance(user, Response):
        return user
    db = get_session()
    return render_template(
        "admin_indexes.html",
        rows=all_indexes(db),
        users=db.scalars(select(User).order_by(User.username)).all(),
    )


def _form_config(index: Index | None, kind: str) -> dict[str, Any]:
    """Index settings from a create or edit form, as apply_config takes them."""
    form = request.form
    config: dict[str, Any] = {
        "title": form.get("title", "").strip(),
        "description": form.get("description", "").strip(),
    }
    # Only when the form has the field (and, creating, filled it): empty means the owner and
    # superusers alone, which a form without the field must never set by accident.
    if "acl_read" in form and (index is not None or form["acl_read"].strip()):
        config["acl_read"] = form["acl_read"]
    if "block_vulnerable" in form:
        config["block_vulnerable"] = form["block_vulnerable"]
    if kind == "mirror":
        url = form.get("mirror_url", "").strip()
        # The form shows the URL masked; an unchanged mask keeps the stored credentials.
        if index is None or url != mask_url(index.mirror_url or ""):
            config["mirror_url"] = url
        config["mirror_cache_expiry"] = form.get("mirror_cache_expiry", "").strip() or None
        if index is not None:  # the edit form has the box; the create form makes online mirrors
            config["offline"] = bool(form.get("offline"))
        # The guard (docs/supply-chain.md), on the edit form only: a form without the field
        # must never lift a cooldown by accident.
        if index is not None and "mirror_min_age" in form:
            config["mirror_min_age"] = form["mirror_min_age"].strip() or "0"
        if index is not None and "mirror_min_age_exempt" in form:
            config["mirror_min_age_exempt"] = form["mirror_min_age_exempt"]
    else:
        config["bases"] = form.get("bases", "")
        config["mirror_whitelist"] = form.get("mirror_whitelist", "")
        config["volatile"] = bool(form.get("volatile"))
        if index is not None or "acl_upload" in form:
            config["acl_upload"] = form.get("acl_upload", "")
    if index is not None and "blocked" in form:
        config["blocked"] = form["blocked"]  # one `SPEC: reason` per line
    return config


@bp.post("/+indexes/new")
def create_index_form() -> Response:
    """Create an index (superusers for anyone, users for themselves; as PUT /USER/INDEX)."""
    caller = authenticated_user()
    if caller is None:
        return login_redirect()
    db = get_session()
    owner_name = (request.form.get("owner") or caller.username).strip()
    if owner_name != caller.username and not caller.is_superuser:
        raise HTTPError(
            403, f"Only {owner_name} or a superuser may create indexes for {owner_name}."
        )
    name = (request.form.get("name") or "").strip()
    kind = request.form.get("type", "stage")
    begin_write(db)
    owner = _user_or_404(owner_name)
    config = {"type": kind, **_form_config(None, kind)}
    if not config.get("acl_upload"):
        config.pop("acl_upload", None)  # default: the owner
    try:
        created = create_index(
            db, owner, name, config, user=caller, users_may_mirror=_users_may_mirror()
        )
        db.flush()
    except IndexPermissionError as exc:
        db.rollback()
        raise HTTPError(403, f"Cannot create {owner_name}/{name}: {exc}.") from None
    except IndexConfigError as exc:
        db.rollback()
        flash(f"Cannot create {owner_name}/{name}: {exc}.", "error")
        return back(url_for("web.admin_indexes") if caller.is_superuser else url_for("web.account"))
    db.commit()
    flash(f"Index {created.path} created.", "info")
    return redirect(index_url(created.path), 303)


def _users_may_mirror() -> bool:
    return current_app.config["PYSHELF_SETTINGS"].users_may_mirror


def _configurable(user: str, index: str) -> tuple[Index, User] | Response:
    caller = authenticated_user()
    if caller is None:
        return login_redirect()
    found = index_or_404(user, index)
    if not may_configure(found, caller):
        raise HTTPError(403, f"Only {user} or a superuser may configure {found.path}.")
    return found, caller


@bp.route("/<user>/<index>/+edit", methods=["GET", "POST"])
def edit_index(user: str, index: str) -> Response | str | tuple[str, int]:
    """Change an index's settings (the owner or a superuser; as PATCH /USER/INDEX)."""
    checked = _configurable(user, index)
    if isinstance(checked, Response):
        return checked
    found, caller = checked
    may_set_url = may_set_mirror_url(caller, users_may_mirror=_users_may_mirror())
    if request.method == "GET":
        return render_template(
            "index_edit.html", index=found, error=None, may_set_mirror_url=may_set_url
        )
    db = get_session()
    begin_write(db)
    found = index_or_404(user, index)  # again, inside the write transaction
    try:
        apply_config(
            db,
            found,
            _form_config(found, found.type),
            user=caller,
            users_may_mirror=_users_may_mirror(),
        )
        db.flush()
    except IndexPermissionError as exc:
        db.rollback()
        raise HTTPError(403, f"Cannot change {found.path}: {exc}.") from None
    except IndexConfigError as exc:
        db.rollback()
        found = index_or_404(user, index)
        page = render_template(
            "index_edit.html", index=found, error=f"{exc}.", may_set_mirror_url=may_set_url
        )
        return page, 400
    db.commit()
    flash(f"Settings of {found.path} saved.", "info")
    return redirect(index_url(found.path), 303)


@bp.post("/<user>/<index>/+delete")
def delete_index(user: str, index: str) -> Response:
    """Delete an index and its files (refused while another index uses it as a base)."""
    checked = _configurable(user, index)
    if isinstance(checked, Response):
        return checked
    found, caller = checked
    db = get_session()
    begin_write(db)
    try:
        delete_index_and_contents(db, found)
    except InUse as exc:
        db.rollback()
        flash(str(exc), "error")
        return redirect(url_for("web.edit_index", user=user, index=index), 303)
    db.commit()
    flash(f"Index {found.path} deleted.", "info")
    return redirect(
        url_for("web.admin_indexes") if caller.is_superuser else url_for("web.home"), 303
    )
