"""Who is asking: HTTP Basic (password or `__token__`), Bearer tokens, devpi-client's
`X-Devpi-Auth` login tokens, and web sessions; and whether they may read an index."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

import itsdangerous
from flask import Flask, Response, current_app, g, request
from flask import session as cookie_session
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.core import initial_password
from app.data.db import begin_write, get_session
from app.data.models import Index, Token, User, WebSession, utcnow
from app.http.errors import HTTPError, too_many_logins
from app.services import throttle
from app.services.indexes import Reader, is_public, may_read, resolution_order
from app.services.passwords import DUMMY_HASH, hash_password, is_imported_hash, password_matches

log = logging.getLogger(__name__)

TOKEN_USERNAME = "__token__"  # noqa: S105 - a convention, not a secret
TOKEN_PREFIX = "pyshelf-"  # noqa: S105 - marks tokens, not a secret
REALM = 'Basic realm="pyshelf"'
SAFE_METHODS = ("GET", "HEAD")
# The only unsafe requests a token limited to an index may make, and only to that index:
# uploads of files and docs (twine, devpi upload) and yanks (the API's and the web form).
SCOPED_TOKEN_WRITES = frozenset({"upload.upload", "api.yank_version", "web.yank", "web.doc_upload"})
# POSTs that only read again: refreshing a mirrored page, on any index the token may read.
SCOPED_TOKEN_REFRESHES = frozenset({"simple.refresh", "web.refresh"})
INVALID_CREDENTIALS = "Invalid credentials: wrong username, password or token."
TOKEN_TOUCH_SECONDS = 600  # 10 minutes: how stale a token's last_used_at may get (fewer writes)
# Login tokens of `POST /+login` (devpi-client sends them back in X-Devpi-Auth). The prefix
# must not start with "devpi-" or "pypi-": devpi-client would take those for PyPI tokens.
LOGIN_TOKEN_PREFIX = "pyshelf.login."  # noqa: S105 - marks login tokens, not a secret
LOGIN_TOKEN_SECONDS = 36_000  # 10 hours, as devpi-server's logins
LOGIN_TOKEN_SALT = "pyshelf.devpi-login"  # noqa: S105 - itsdangerous namespace, not a secret
SESSION_FINGERPRINT_KEY = "_password_fp"  # in the web session: see bind_session
SESSION_ID_KEY = "_session_id"  # in the web session: names its WebSession row (start_session)


def _upgrade_hash(user: User, password: str) -> None:
    """Replace an imported devpi hash by scrypt after a successful login (never fatal)."""
    old, new = user.password_hash, hash_password(password)
    try:
        with current_app.extensions["pyshelf.db"].session() as session:
            begin_write(session)
            session.execute(
                update(User)
                .where(User.id == user.id, User.password_hash == old)
                .values(password_hash=new)
            )
            session.commit()
    except SQLAlchemyError:
        log.warning("could not re-hash the imported password of %s", user.username, exc_info=True)
        return
    set_committed_value(user, "password_hash", new)  # what the database now holds
    log.info("re-hashed the imported devpi password of %s to scrypt", user.username)


def _login_serializer() -> itsdangerous.URLSafeTimedSerializer:
    return itsdangerous.URLSafeTimedSerializer(
        current_app.config["SECRET_KEY"], salt=LOGIN_TOKEN_SALT
    )


def _hash_fingerprint(user: User) -> str:
    """Changes with the password hash, so a new password ends the user's login tokens."""
    key = current_app.config["SECRET_KEY"].encode("utf-8")
    return hmac.new(key, user.password_hash.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def bind_session(user: User) -> None:
    """Tie the web session to the user's current password: a new password (their own, or an
    admin's reset) ends every other session of theirs, copied cookies included."""
    cookie_session[SESSION_FINGERPRINT_KEY] = _hash_fingerprint(user)


def start_session(user: User) -> None:
    """Log `user` in to a new web session (and commit): a fresh cookie that names a new
    WebSession row, which ends at logout or SESSION_LIFETIME after now, whichever comes first.

    The cookie alone is signed but cannot be revoked; the row can, so a copy of the cookie
    made before logout stops working with it.
    """
    session = get_session()
    begin_write(session)
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))  # housekeeping
    secret = secrets.token_urlsafe(32)
    lifetime = current_app.permanent_session_lifetime
    session.add(
        WebSession(id_sha256=token_hash(secret), user_id=user.id, expires_at=now + lifetime)
    )
    session.commit()
    cookie_session.clear()  # a fresh session (and CSRF token) for the new identity
    login_user(user)  # type: ignore[arg-type]  # User has the members flask-login reads
    bind_session(user)
    cookie_session[SESSION_ID_KEY] = secret
    cookie_session.permanent = True  # the cookie expires with the session, not the browser


def end_session() -> None:
    """Log out: delete this web session's row (every copy of the cookie ends) and clear it."""
    secret = cookie_session.get(SESSION_ID_KEY)
    if isinstance(secret, str):
        session = get_session()
        begin_write(session)
        session.execute(delete(WebSession).where(WebSession.id_sha256 == token_hash(secret)))
        session.commit()
    logout_user()
    cookie_session.clear()


def _session_is_live(user: User) -> bool:
    """Whether the cookie names a WebSession of `user` that has not ended."""
    secret = cookie_session.get(SESSION_ID_KEY)
    if not isinstance(secret, str):
        return False  # made before sessions were stored, or forged
    row = get_session().get(WebSession, token_hash(secret))
    return row is not None and row.user_id == user.id and row.expires_at > utcnow()


def new_login_token(user: User) -> str:
    """A login token for `user`: signed with SECRET_KEY (every worker accepts it), valid for
    LOGIN_TOKEN_SECONDS or until the password changes."""
    payload = [user.username, _hash_fingerprint(user)]
    return LOGIN_TOKEN_PREFIX + _login_serializer().dumps(payload)


def user_from_login_token(session: Session, username: str, token: str) -> User | None:
    """The user a login token was issued to, or None when it expired, is forged, names another
    user, or the password changed since."""
    try:
        payload = _login_serializer().loads(
            token.removeprefix(LOGIN_TOKEN_PREFIX), max_age=LOGIN_TOKEN_SECONDS
        )
    except itsdangerous.BadData:
        return None
    if not (isinstance(payload, list) and len(payload) == 2 and payload[0] == username):
        return None
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not hmac.compare_digest(_hash_fingerprint(user), str(payload[1])):
        return None
    return user


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
        password_matches(DUMMY_HASH, password)
        return None
    if not password_matches(user.password_hash, password):
        return None
    if is_imported_hash(user.password_hash):
        _upgrade_hash(user, password)
    return user


def verify_password(username: str, password: str, address: str | None) -> User | None:
    """Check a password under the login throttle (app/services/throttle.py).

    Raises LoginThrottled while the account is locked for this address, or the address is,
    without looking at the password; a failure is counted against both, a success clears the
    pair's counter.
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
    throttle.record_success(database, state, keys)
    # The generated first password has been used: its file in DATA_DIR is no longer needed.
    initial_password.forget(current_app.config["PYSHELF_SETTINGS"], user.username, "logged in")
    return user


def new_token(
    session: Session, user: User, description: str = "", index: Index | None = None
) -> str:
    """Add an API token of `user` (the caller commits) and return its secret, shown once.

    A token limited to `index` may read that index and its bases as they are now: the set is
    stored with the token, so a later change of the bases never widens it.
    """
    secret = new_token_secret()
    session.add(
        Token(
            user_id=user.id,
            description=description[:255],
            secret_sha256=token_hash(secret),
            index_id=index.id if index is not None else None,
            read_paths=(
                None if index is None else sorted(i.path for i in resolution_order(session, index))
            ),
        )
    )
    return secret


def _scope_paths(token: Token) -> frozenset[str] | None:
    """What a token may read: None (no limit), or the indexes of its index's resolution order
    (whose files the index's pages link to) that it could read when it was made."""
    if token.index_id is None:
        return None
    if token.index is None:
        return frozenset()
    allowed = set(token.read_paths if token.read_paths is not None else [token.index.path])
    return frozenset(
        i.path for i in resolution_order(get_session(), token.index) if i.path in allowed
    )


def _check_token_scope(token: Token) -> None:
    """The one rule for tokens limited to an index: they read (GET, HEAD, and refresh mirrored
    pages) that index and its bases (`_scope_paths`), and upload, upload docs and yank on that
    index (SCOPED_TOKEN_WRITES); anything else, such as settings, ACLs, users, tokens or
    deletions, is refused."""
    if token.index_id is None:
        return
    scope = token.index
    args = request.view_args or {}
    target = (args.get("user"), args.get("index"))
    if scope is not None and None not in target:
        if request.method in SAFE_METHODS or request.endpoint in SCOPED_TOKEN_REFRESHES:
            if f"{target[0]}/{target[1]}" in (_scope_paths(token) or ()):
                return
        elif (
            target == (scope.owner.username, scope.name) and request.endpoint in SCOPED_TOKEN_WRITES
        ):
            return
    where = scope.path if scope is not None else "a deleted index"
    raise HTTPError(
        403,
        f"This token is limited to index {where} (reading it, uploading and yanking there); "
        f"it cannot be used for {request.method} {request.path[:200]}.",
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
    """(username, secret) from `Basic b64`, `Bearer T` or `Token T` (RFC 7617, 6750), or None."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
            raise HTTPError(400, "Malformed Basic Authorization header.") from None
        username, sep, password = decoded.partition(":")  # passwords may contain ':'
        if not sep:
            raise HTTPError(400, "Malformed Basic Authorization header: no ':' in credentials.")
        return username, password
    if scheme in ("bearer", "token") and value:
        return TOKEN_USERNAME, value
    return None


def _credentials_from_devpi_header(header: str) -> tuple[str, str] | None:
    """(username, secret) from devpi-client's `X-Devpi-Auth: base64(USER:SECRET)`, or None."""
    try:
        decoded = base64.b64decode(header.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
        return None  # as devpi-server: an unreadable header is no credentials at all
    username, sep, secret = decoded.partition(":")
    return (username, secret) if sep and username else None


def _login_url() -> str:
    return request.host_url.rstrip("/") + request.script_root + "/+login"


def init_app(app: Flask) -> None:
    """Wire flask-login: sessions for the web UI, the Authorization header for clients."""
    manager = LoginManager()
    manager.init_app(app)
    app.after_request(_private_caching)

    @manager.user_loader
    def _load_user(user_id: str) -> User | None:
        if request.headers.get("Authorization") or request.headers.get("X-Devpi-Auth"):
            return None  # explicit credentials win over a session cookie
        user = get_session().get(User, int(user_id))
        bound = str(cookie_session.get(SESSION_FINGERPRINT_KEY, ""))
        if user is None or not hmac.compare_digest(bound, _hash_fingerprint(user)):
            return None  # the password changed since this session logged in
        if not _session_is_live(user):
            return None  # logged out (a copied cookie), or older than SESSION_LIFETIME
        return user

    @manager.request_loader
    def _load_from_header(req: object) -> User | None:
        # devpi-client may send Basic credentials for a proxy in front, and its own login in
        # X-Devpi-Auth: the latter is meant for us.
        devpi = request.headers.get("X-Devpi-Auth", "")
        header = request.headers.get("Authorization", "")
        if devpi:
            creds = _credentials_from_devpi_header(devpi)
        else:
            creds = _credentials_from_header(header) if header else None
        if creds is None:
            return None
        username, secret = creds
        if secret.startswith(LOGIN_TOKEN_PREFIX):
            user = user_from_login_token(get_session(), username, secret)
            if user is None:  # anonymous; require_user tells devpi-client to log in again
                g.login_expired_for = username
            return user
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
                raise too_many_logins(exc.retry_after_seconds) from None
            if user is not None:
                return user
        if g.get("needs_read_access"):
            # Reading a restricted index: challenge (RFC 9110 §11.6.1), so pip asks its keyring
            # or prompts.
            raise HTTPError(401, INVALID_CREDENTIALS, {"WWW-Authenticate": REALM})
        raise HTTPError(403, INVALID_CREDENTIALS)


def authenticated_user() -> User | None:
    """The caller as a User, or None when no credentials came with the request."""
    # current_user is a User, or flask-login's anonymous user (never authenticated)
    return current_user if isinstance(current_user, User) else None


def require_user() -> User:
    """The caller, or 401 with a challenge so clients send credentials (RFC 9110 §15.5.2)."""
    user = authenticated_user()
    if user is None and g.get("login_expired_for"):
        # devpi-client forgets a stored login when a 401 carries a Location (devpi's protocol).
        raise HTTPError(
            401,
            "Your login expired or is no longer valid: log in again (devpi login).",
            {"WWW-Authenticate": REALM, "Location": _login_url()},
        )
    if user is None:
        raise HTTPError(
            401, "Authentication required: log in or pass credentials.", {"WWW-Authenticate": REALM}
        )
    return user


def current_reader() -> Reader:
    """Who reads in this request: the caller, and what their token is limited to."""
    if "reader" not in g:
        user = authenticated_user()
        token = g.get("auth_token")
        g.reader = Reader(user, _scope_paths(token) if token is not None else None)
    return g.reader


def require_read(
    index: Index, *, with_bases: bool = True, order: list[Index] | None = None
) -> Reader | None:
    """Check that the caller may read `index` (app/services/indexes.py may_read), for every view
    that shows anything of it: None when it and (`with_bases`) its bases are public, so that the
    caller need not be known; else the Reader to filter its bases with.

    Anonymous callers (and wrong credentials) get 401 with a challenge, so pip asks its
    keyring or prompts; a user who may not read gets 403 (RFC 9110 §15.5.2). The response becomes
    `Cache-Control: private` with `Vary: Authorization` (see `_private_caching`).
    """
    if order is None:  # `order`: the caller's resolution_order, not computed twice
        order = resolution_order(get_session(), index) if with_bases else [index]
    if all(is_public(i) for i in order):
        return None  # no credentials are checked for public reads, as before acl_read
    g.needs_read_access = True
    reader = current_reader()
    if may_read(index, reader):
        return reader
    if reader.user is None:
        if g.get("login_expired_for"):
            require_user()  # devpi-client's "log in again" (a 401 with Location)
        raise HTTPError(
            401,
            f"Authentication required: index {index.path} is not public; log in or pass "
            "credentials.",
            {"WWW-Authenticate": REALM},
        )
    raise HTTPError(403, f"The user '{reader.user.username}' may not read index '{index.path}'.")


def _private_caching(response: Response) -> Response:
    """Responses about a restricted index are never stored by shared caches: `public` becomes
    `private`, and caches keep one copy per Authorization header."""
    if not g.get("needs_read_access"):
        return response
    directives = [
        d.strip()
        for d in response.headers.get("Cache-Control", "").split(",")
        if d.strip() and d.strip().lower() != "public"
    ]
    if not any(d.lower() in ("private", "no-store") for d in directives):
        directives.insert(0, "private")
    response.headers["Cache-Control"] = ", ".join(directives)
    response.vary.add("Authorization")
    return response
