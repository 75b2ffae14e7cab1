"""Who is asking: HTTP Basic (password or `__token__`), Bearer tokens, and web sessions."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets

from flask import Flask, current_app, g, request
from flask_login import LoginManager, current_user
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from app import throttle
from app.db import begin_write, get_session
from app.errors import HTTPError
from app.models import Token, User, utcnow

log = logging.getLogger(__name__)

TOKEN_USERNAME = "__token__"  # noqa: S105 - a convention, not a secret
TOKEN_PREFIX = "pyshelf-"  # noqa: S105 - marks tokens, not a secret
REALM = 'Basic realm="pyshelf"'
TOKEN_TOUCH_SECONDS = 600  # 10 minutes: how stale a token's last_used_at may get (fewer writes)
# A constant-time dummy hash, checked when the username is unknown so timing reveals nothing.
_DUMMY_HASH = generate_password_hash("not a password")


def hash_password(password: str) -> str:
    """Hash a password with werkzeug's default KDF (scrypt)."""
    return generate_password_hash(password)


def new_token_secret() -> str:
    """A new API token: shown once, stored only as its sha256."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    """The stored form of a token secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def find_token(session: Session, username: str, secret: str) -> Token | None:
    """The API token these credentials present (as `__token__` or its user's name), or None."""
    if username != TOKEN_USERNAME and not secret.startswith(TOKEN_PREFIX):
        return None
    token = session.scalar(select(Token).where(Token.secret_sha256 == token_hash(secret)))
    if token is not None and username in (TOKEN_USERNAME, token.user.username):
        return token
    return None  # not a token of this user: a password may start with "pyshelf-" too


def _password_user(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def check_credentials(session: Session, username: str, secret: str) -> User | None:
    """The user these credentials belong to, or None (password, or token as `__token__`).

    Not throttled: request handlers use `verify_password` for passwords.
    """
    token = find_token(session, username, secret)
    if token is not None:
        return token.user
    if username == TOKEN_USERNAME:
        return None
    return _password_user(session, username, secret)


def verify_password(username: str, password: str, address: str | None) -> User | None:
    """Check a password under the login throttle (app/throttle.py).

    Raises LoginThrottled while the account or the address is locked, without looking at the
    password; a failure is counted against both, a success clears the account's counter.
    """
    database = current_app.extensions["pyshelf.db"]
    keys = throttle.keys_for(username, address)
    state = throttle.check(database, keys)
    if state.retry_after_seconds:
        raise throttle.LoginThrottled(state.retry_after_seconds)
    user = _password_user(get_session(), username, password)
    if user is None:
        throttle.record_failure(database, keys)
        log.warning("failed password for %r from %s", username[:64], address)
        return None
    throttle.record_success(database, state, username)
    return user


def _check_token_scope(token: Token) -> None:
    """A token limited to one index authenticates only requests to /USER/INDEX/... of it."""
    if token.index_id is None:
        return
    scope = token.index
    args = request.view_args or {}
    if scope is None or (args.get("user"), args.get("index")) != (scope.owner.username, scope.name):
        where = scope.path if scope is not None else "a deleted index"
        raise HTTPError(
            403, f"This token is limited to index {where}; it cannot be used for {request.path}."
        )


def _touch_token(token: Token) -> None:
    """Record when a token was last used (at most every TOKEN_TOUCH_SECONDS; never fatal)."""
    now = utcnow()
    if token.last_used_at and (now - token.last_used_at).total_seconds() < TOKEN_TOUCH_SECONDS:
        return
    try:
        with current_app.extensions["pyshelf.db"].session() as session:
            begin_write(session)
            session.execute(update(Token).where(Token.id == token.id).values(last_used_at=now))
            session.commit()
    except SQLAlchemyError:
        log.warning("could not record the use of token %s", token.id, exc_info=True)


def _credentials_from_header(header: str) -> tuple[str, str] | None:
    """(username, secret) from `Basic b64`, `Bearer T` or `Token T` (R53); None if absent."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPError(400, "Malformed Basic Authorization header.") from None
        username, sep, password = decoded.partition(":")  # passwords may contain ':'
        if not sep:
            raise HTTPError(400, "Malformed Basic Authorization header: no ':' in credentials.")
        return username, password
    if scheme in ("bearer", "token") and value:
        return TOKEN_USERNAME, value
    return None


def init_app(app: Flask) -> None:
    """Wire flask-login: sessions for the web UI, the Authorization header for clients."""
    manager = LoginManager()
    manager.init_app(app)

    @manager.user_loader
    def _load_user(user_id: str) -> User | None:
        if request.headers.get("Authorization"):
            return None  # explicit credentials win over a session cookie (and skip CSRF checks)
        return get_session().get(User, int(user_id))

    @manager.request_loader
    def _load_from_header(req: object) -> User | None:
        header = request.headers.get("Authorization", "")
        creds = _credentials_from_header(header) if header else None
        if creds is None:
            return None
        username, secret = creds
        token = find_token(get_session(), username, secret)
        if token is not None:
            _check_token_scope(token)
            g.auth_token = token  # uploads and views may ask which token authenticated
            _touch_token(token)
            return token.user
        if username != TOKEN_USERNAME:
            try:
                user = verify_password(username, secret, request.remote_addr)
            except throttle.LoginThrottled as exc:
                wait = exc.retry_after_seconds
                raise HTTPError(
                    429,
                    f"Too many failed logins for this account or address; retry in {wait} s.",
                    {"Retry-After": str(wait)},
                ) from None
            if user is not None:
                return user
        raise HTTPError(403, "Invalid credentials: wrong username, password or token.")


def authenticated_user() -> User | None:
    """The caller as a User, or None when no credentials came with the request."""
    return current_user if current_user.is_authenticated else None  # type: ignore[return-value]


def require_user() -> User:
    """The caller, or 401 with a challenge so clients and keyrings send credentials (R52)."""
    user = authenticated_user()
    if user is None:
        raise HTTPError(
            401, "Authentication required: log in or pass credentials.", {"WWW-Authenticate": REALM}
        )
    return user
