"""HTTP errors whose reason goes into the status line and the body (text, HTML or JSON)."""

from __future__ import annotations

import html
import json
import logging
import unicodedata

from flask import Flask, Response, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Response as BaseResponse  # redirect()'s; Flask's subclasses it

# DISK_FULL_ERRNOS is storage's; re-exported here for app/http/serving.py
from app.core.storage import DISK_FULL_ERRNOS as DISK_FULL_ERRNOS
from app.core.storage import StorageUnavailable
from app.core.upstream import UpstreamTimeout
from app.data.db import get_session
from app.data.models import Index
from app.services.indexes import get_index
from app.services.mirror import (
    MirrorError,
    NotListed,
    StillFetching,
    UpstreamFailed,
    UpstreamTimedOut,
)
from app.services.releases import InUse, InvalidRequest, NotAllowed, NotFound, ReleaseError

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 300
NO_STORE = "no-store"  # errors must not be cached (RFC 9111 §5.2.2.5)
DISK_FULL = "Insufficient Storage: the data disk is full; nothing was stored (free DATA_DIR space)."
DATABASE_BUSY = "Database busy: another writer held the lock too long; nothing was stored, retry."
RETRY_AFTER_SECONDS = "30"
# The one mapping of the domain's refusals (app/services/releases.py) to status codes.
DOMAIN_STATUS: dict[type[ReleaseError], int] = {
    InvalidRequest: 400,
    NotAllowed: 403,
    NotFound: 404,
    InUse: 409,
}
# The mirror's (app/services/mirror/results.py): the first class that matches decides.
MIRROR_STATUS: dict[type[MirrorError], int] = {
    NotListed: 404,
    StillFetching: 503,
    UpstreamTimedOut: 504,
    UpstreamFailed: 502,
}


class HTTPError(Exception):
    """Raised anywhere below a view to answer `status` with a human reason; twine prints it."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def from_domain(exc: ReleaseError) -> HTTPError:
    """The HTTPError for a domain refusal: its status from DOMAIN_STATUS, its message as reason."""
    status = next(code for kind, code in DOMAIN_STATUS.items() if isinstance(exc, kind))
    return HTTPError(status, str(exc))


def from_mirror(exc: MirrorError) -> HTTPError:
    """The HTTPError for a mirror failure: its status from MIRROR_STATUS, its message as reason,
    and Retry-After (RFC 9110 §10.2.3) when the mirror says when to retry."""
    status = next(code for kind, code in MIRROR_STATUS.items() if isinstance(exc, kind))
    headers = {}
    if exc.retry_after_seconds is not None:
        headers["Retry-After"] = str(exc.retry_after_seconds)
    return HTTPError(status, str(exc), headers)


def index_or_404(user: str, index: str) -> Index:
    """The index `user/index` of this request's session, or 404."""
    found = get_index(get_session(), user, index)
    if found is None:
        raise HTTPError(404, f"Index {user}/{index} does not exist.")
    return found


def upstream_failed(exc: Exception, project: str) -> HTTPError:
    """504 for an upstream timeout, else 502, and Retry-After (RFC 9110 §10.2.3): nothing cached."""
    what = "timed out" if isinstance(exc, UpstreamTimeout) else "failed"
    status = 504 if isinstance(exc, UpstreamTimeout) else 502
    return HTTPError(
        status, f"Upstream {what} and {project} is not cached: {exc}", {"Retry-After": "30"}
    )


def too_many_logins(retry_after_seconds: int) -> HTTPError:
    """429 for a throttled account or address, saying when to retry."""
    return HTTPError(
        429,
        f"Too many failed logins for this account or address; retry in {retry_after_seconds} s.",
        {"Retry-After": str(retry_after_seconds)},
    )


def clean_reason(reason: str) -> str:
    """One line, ISO-8859-1 safe, bounded: what an HTTP/1.1 status line can carry.

    RFC 9112 section 4 allows only tab, space, VCHAR and obs-text in a reason phrase; gunicorn
    answers 500 ("Invalid status") to anything else. Control characters (C0 with CR and LF,
    DEL, C1) are escaped as Python writes them (`\\x00`, `\\r`), not dropped, so a reason
    that echoes an uploaded name still shows what was sent.
    """
    line = "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) == "Cc"
        else char
        for char in reason.strip()
    )
    line = line.encode("latin-1", "replace").decode("latin-1")
    if len(line) > MAX_REASON_CHARS:
        line = line[: MAX_REASON_CHARS - 3] + "..."
    return line


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    """A response whose status line is `status reason` and whose body says it (twine shows it)."""
    reason = clean_reason(reason)
    kind = request.accept_mimetypes.best_match(["text/plain", "application/json", "text/html"])
    if kind == "application/json":
        body = json.dumps({"message": reason, "code": f"{status} {reason}", "title": reason})
        response = Response(body, mimetype="application/json")
    elif kind == "text/html":
        text = html.escape(reason)
        home = html.escape(request.script_root or "") + "/"
        body = (
            '<!DOCTYPE html><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{status} {text}</title><h1>{status}</h1><p>{text}</p>"
            f'<nav><a href="{home}">pyshelf home</a></nav>\n'
        )
        response = Response(body, mimetype="text/html")
    else:
        response = Response(reason + "\n", mimetype="text/plain")
    response.status = f"{status} {reason}"
    response.headers["Cache-Control"] = NO_STORE
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def storage_failure(exc: BaseException) -> HTTPError | None:
    """507 for a full disk, 503 for a database locked past its busy timeout; None otherwise.

    Both leave nothing half-stored (temp files are discarded, the transaction rolled back);
    the client is told why and when to retry instead of getting a bare 500.
    """
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return HTTPError(507, DISK_FULL, {"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        if "disk is full" in message:  # SQLITE_FULL: "database or disk is full"
            return HTTPError(507, DISK_FULL, {"Retry-After": RETRY_AFTER_SECONDS})
        if "database is locked" in message or "database is busy" in message:
            return HTTPError(503, DATABASE_BUSY, {"Retry-After": RETRY_AFTER_SECONDS})
    return None


def init_app(app: Flask) -> None:
    """Turn HTTPError, the domain's refusals, the mirror's failures and werkzeug's exceptions
    into reasoned responses."""

    @app.errorhandler(HTTPError)
    def _handle_http_error(exc: HTTPError) -> Response:
        return error_response(exc.status, exc.reason, exc.headers)

    @app.errorhandler(ReleaseError)
    def _handle_domain_error(exc: ReleaseError) -> Response:
        failure = from_domain(exc)
        return error_response(failure.status, failure.reason)

    @app.errorhandler(MirrorError)
    def _handle_mirror_error(exc: MirrorError) -> Response:
        failure = from_mirror(exc)
        return error_response(failure.status, failure.reason, failure.headers)

    @app.errorhandler(StorageUnavailable)
    def _handle_storage(exc: StorageUnavailable) -> Response:
        log.error("blob store unavailable: %s", exc)
        return error_response(
            503, "The blob store is unavailable; try again shortly.", {"Retry-After": "30"}
        )

    @app.errorhandler(OSError)
    @app.errorhandler(OperationalError)
    def _handle_storage_failure(exc: Exception) -> Response:
        failure = storage_failure(exc)
        if failure is None:
            raise exc  # a real bug: Flask logs it and answers 500
        log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(failure.status, failure.reason, failure.headers)

    @app.errorhandler(HTTPException)
    def _handle_werkzeug(exc: HTTPException) -> BaseResponse:
        if exc.code in (301, 302, 307, 308):
            return exc.get_response()
        reason = exc.description or exc.name
        if exc.code == 413:
            reason = "File too large: the upload exceeds this server's MAX_UPLOAD_SIZE."
        response = error_response(exc.code or 500, f"{exc.name}: {reason}"[:MAX_REASON_CHARS])
        # Keep the exception's own headers: a 416 must say `Content-Range: bytes */SIZE`
        # (RFC 9110 §15.5.17).
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response
