"""Who is asking: HTTP Basic (password or `__token__`), Bearer tokens, and web sessions."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from flask import Flask, request
from flask_login import LoginManager, current_user
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from app.db import get_session
from app.errors import HTTPError
from app.models import Token, User

TOKEN_USERNAME = "__token__"  # noqa: S105 - a convention, not a secret
TOKEN_PREFIX = "pyshelf-"  # noqa: S105 - marks tokens, not a secret
REALM = 'Basic realm="pyshelf"'
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


def check_credentials(session: Session, username: str, secret: str) -> User | None:
    """The user these credentials belong to, or None (password, or token as `__token__`)."""
    if username == TOKEN_USERNAME or secret.startswith(TOKEN_PREFIX):
        token = session.scalar(select(Token).where(Token.secret_sha256 == token_hash(secret)))
        if token is not None and username in (TOKEN_USERNAME, token.user.username):
            return token.user
        if username == TOKEN_USERNAME:
            return None
        # Not a token of this user: a password may start with "pyshelf-" too.
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        check_password_hash(_DUMMY_HASH, secret)
        return None
    return user if check_password_hash(user.password_hash, secret) else None


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
        return get_session().get(User, int(user_id))

    @manager.request_loader
    def _load_from_header(req: object) -> User | None:
        header = request.headers.get("Authorization", "")
        creds = _credentials_from_header(header) if header else None
        if creds is None:
            return None
        user = check_credentials(get_session(), *creds)
        if user is None:
            raise HTTPError(403, "Invalid credentials: wrong username, password or token.")
        return user


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
