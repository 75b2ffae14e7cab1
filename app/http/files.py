"""bp: release files and their PEP 658 metadata at /USER/INDEX/+f/SHA256/FILENAME."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from flask import Blueprint, Flask, Response, current_app, redirect, request, send_file
from sqlalchemy import BindParameter, Select, bindparam, exists, func, select
from werkzeug.http import http_date
from werkzeug.wrappers import Response as BaseResponse  # redirect()'s; Flask's subclasses it

from app.core.dists import FilenameInfo, InvalidDistribution, parse_filename
from app.data.db import FastRead, get_session
from app.data.models import (
    ANONYMOUS,
    File,
    Index,
    MirrorFile,
    MirrorHolding,
    MirrorPage,
    MirrorSidecar,
    Project,
    ServerBlock,
    User,
)
from app.http import metrics
from app.http.auth import require_read
from app.http.errors import HTTPError
from app.http.metrics import mark_guard
from app.http.web import hook_headers
from app.services import guard
from app.services.mirror import Blob, Data, Head, Served
from app.services.status import QUARANTINED, Marker

bp = Blueprint("files", __name__)
log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMMUTABLE_SECONDS = 365_000_000  # RFC 8246 immutable: about 11.5 years, as PyPI
CACHE_IMMUTABLE = f"public, max-age={IMMUTABLE_SECONDS}, immutable"
METADATA_SUFFIX = ".metadata"
METADATA_MIMETYPE = "text/plain"  # werkzeug adds "; charset=utf-8" to text types
FILE_PATH_RE = re.compile(r"^/([^/]+)/([^/]+)/\+f/([0-9a-f]{64})/([^/]+)$")
# Requests CachedFiles leaves to the view: ranges and revalidations (werkzeug's rules).
CONDITIONAL_HEADERS = (
    "HTTP_RANGE",
    "HTTP_IF_RANGE",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
)


def send_blob(
    sha256: str, filename: str, *, mimetype: str = "application/octet-stream"
) -> BaseResponse:
    """Send a stored blob with Range, ETag and immutable caching; never Content-Encoding."""
    storage = current_app.extensions["pyshelf.storage"]
    local_path = getattr(storage, "local_path", None)
    if local_path is None and hasattr(storage, "read_range"):
        return _send_remote(storage, sha256, filename, mimetype)
    accel_prefix = current_app.config["PYSHELF_SETTINGS"].accel_redirect_prefix
    if accel_prefix and local_path is not None:
        uri = accel_redirect(accel_prefix, storage, sha256, filename)
        return _send_accel(uri, sha256, mimetype)
    try:
        source: Any = local_path(sha256) if local_path else storage.open(sha256)
        response = send_file(
            source,
            mimetype=mimetype,
            download_name=filename,
            conditional=True,  # Range, If-Range, If-None-Match (RFC 9110 §13, §14)
            etag=sha256,
            max_age=IMMUTABLE_SECONDS,
            last_modified=None,
        )
    except FileNotFoundError:
        raise HTTPError(404, f"File {filename} is missing from the blob store.") from None
    response.headers["Cache-Control"] = CACHE_IMMUTABLE
    # max-age says it to every HTTP/1.1 cache; no Content-Disposition: the URL names the file.
    response.headers.pop("Expires", None)
    response.headers.pop("Content-Disposition", None)
    return response


def accel_redirect(prefix: str, storage: Any, sha256: str, filename: str) -> str:
    """The X-Accel-Redirect URI of a blob on disk: PREFIX/ab/cd/SHA256, as it lies under the
    blob directory (404 when it is not there)."""
    path = storage.local_path(sha256)
    if not os.path.isfile(path):
        raise HTTPError(404, f"File {filename} is missing from the blob store.")
    return f"{prefix}/{path.relative_to(storage.root).as_posix()}"


def _send_accel(uri: str, sha256: str, mimetype: str) -> BaseResponse:
    """ACCEL_REDIRECT_PREFIX: the headers, no body, and X-Accel-Redirect for nginx to send the
    blob (ranges too). Called only once the reader's access is checked; a revalidation that
    matches the ETag is answered here with 304 (RFC 9110 section 13.1.2)."""
    response = Response(b"", mimetype=mimetype)
    response.set_etag(sha256)
    response.headers["Cache-Control"] = CACHE_IMMUTABLE
    response.make_conditional(request.environ)  # in place; no complete_length: no ranges
    if response.status_code == 200:
        response.headers["X-Accel-Redirect"] = uri
    return response


def _send_remote(storage: Any, sha256: str, filename: str, mimetype: str) -> BaseResponse:
    """A blob from S3: a 302 to a presigned URL (S3_REDIRECT), or streamed with Range passed on.

    Called only once the reader's access is checked: the presigned URL is the permission.
    """
    settings = current_app.config["PYSHELF_SETTINGS"]
    # Only GET: a URL presigned for GET refuses HEAD, and a HEAD carries no bytes anyway.
    if settings.s3_redirect and request.method == "GET":
        response = redirect(storage.presigned_url(sha256, filename, mimetype), 302)
        response.headers["Cache-Control"] = "private, no-store"  # the URL expires
        return response
    try:
        size = storage.size(sha256)
    except FileNotFoundError:
        raise HTTPError(404, f"File {filename} is missing from the blob store.") from None
    response = Response(b"", mimetype=mimetype, direct_passthrough=True)
    response.content_length = size
    response.set_etag(sha256)
    # 304 and 412 from the ETag, 206 with Content-Range, or 416 (raised) (RFC 9110 §14, §15.5.17).
    response = response.make_conditional(request.environ, accept_ranges=True, complete_length=size)
    response.headers["Cache-Control"] = CACHE_IMMUTABLE
    if response.status_code not in (200, 206) or request.method == "HEAD":
        response.response = []
        return response
    start, stop = 0, size
    if response.status_code == 206 and response.content_range is not None:
        start, stop = response.content_range.start or 0, response.content_range.stop or size
    try:
        body = storage.read_range(sha256, start, stop)
    except FileNotFoundError:
        raise HTTPError(404, f"File {filename} is missing from the blob store.") from None
    response.response = body
    response.call_on_close(getattr(body, "close", lambda: None))
    return response


def _hosted_file(index: Index, sha256: str, filename: str) -> File | None:
    return get_session().scalar(
        select(File)
        .join(Project)
        .where(Project.index_id == index.id, File.sha256 == sha256, File.filename == filename)
    )


@bp.route("/<user>/<index>/+f/<sha256>/<path:filename>", methods=["GET", "HEAD"])
def release_file(user: str, index: str, sha256: str, filename: str) -> BaseResponse:
    """A release file, or its `.metadata` sidecar (PEP 658/714), to those who may read the
    index; only the index's own files (never another index's blob with the same hash)."""
    is_metadata = filename.endswith(METADATA_SUFFIX)
    dist_filename = filename[: -len(METADATA_SUFFIX)] if is_metadata else filename
    try:
        parsed: FilenameInfo | None = parse_filename(dist_filename)
    except InvalidDistribution:
        parsed = None  # no project, no rule: the lookup answers 404
    name = parsed.normalized_name if parsed is not None else ""
    found, server, marker = guard.file_lookup(get_session(), user, index, name)
    if found is None or not SHA256_RE.match(sha256) or "/" in filename:
        raise HTTPError(404, f"No such file: {filename}")
    # A file's bytes are the same for every reader: only this index's own acl_read counts.
    require_read(found, with_bases=False)
    record = None if found.is_mirror else _hosted_file(found, sha256, dist_filename)
    if record is not None:  # the project's name and the version as its pages show them
        project = record.project
        if project.status is not None:
            marker = Marker(project.status, project.status_reason, found.path)
        _check_guard(
            found, sha256, dist_filename, project.normalized_name, record.version, server, marker
        )
    elif parsed is not None:
        _check_guard(found, sha256, dist_filename, name, parsed.version, server, marker)
    if found.is_mirror:
        return _mirrored(
            current_app.extensions["pyshelf.mirror"].serve_file(
                get_session(),
                found,
                sha256,
                dist_filename,
                is_metadata=is_metadata,
                is_head=request.method == "HEAD",
            )
        )
    if record is None:
        raise HTTPError(404, f"No such file on {found.path}: {filename}")
    if not is_metadata:
        return send_blob(record.sha256, record.filename)
    if not record.metadata_sha256:
        raise HTTPError(404, f"No core metadata for {dist_filename} (only wheels have it).")
    return send_blob(record.metadata_sha256, filename, mimetype=METADATA_MIMETYPE)


def _mirrored(served: Served) -> BaseResponse:
    """The mirror's answer as a response: a stored blob, or bytes clients must not cache (no
    ranges until the file is cached); its failures are app/http/errors.py's MIRROR_STATUS."""
    if isinstance(served, Blob):
        if served.is_hit:
            metrics.mark_cache_hit()
        mimetype = METADATA_MIMETYPE if served.is_metadata else "application/octet-stream"
        return send_blob(served.key, served.filename, mimetype=mimetype)
    if isinstance(served, Data):
        response = Response(served.data, mimetype=METADATA_MIMETYPE)
    elif isinstance(served, Head):
        response = Response(b"", mimetype="application/octet-stream")
        if served.size is not None:
            response.headers["Content-Length"] = str(served.size)
    else:
        response = Response(served.chunks, mimetype="application/octet-stream")
        response.call_on_close(served.close)
        if served.size is not None:
            response.headers["Content-Length"] = str(served.size)
    response.headers["Cache-Control"] = "no-store"
    return response


def _check_guard(
    index: Index,
    sha256: str,
    filename: str,
    name: str,
    version: str,
    server: guard.RuleGroups,
    marker: Marker | None,
) -> None:
    """Refuse a file (or its .metadata) that the supply-chain guard keeps from this index's
    pages: 403 when blocked or refused by block_vulnerable (pip prints the reason), 404 while a
    cooldown holds it back (it does not exist here yet) or its project is quarantined (PEP 792:
    none is offered)."""
    age_from = None
    if index.is_mirror and index.mirror_min_age:
        mirror = current_app.extensions["pyshelf.mirror"]
        age_from = mirror.file_age_from(index, name, sha256, filename)
    rules = guard.guard_for(
        [index], server, marker=marker, advisories=get_session(), precedence=guard.FILE
    )
    verdict = rules.verdict(name, guard.FileFacts(filename, version, index.path, age_from))
    if verdict is None:
        return
    metrics.count_guard(verdict.kind, "file")
    mark_guard(verdict.kind, verdict.detail)
    if verdict.kind in (guard.BLOCKED, guard.COOLDOWN):
        log.info("guard: %s %s/%s: %s", verdict.kind, index.path, filename, verdict.reason)
    status = 404 if verdict.kind in (guard.COOLDOWN, QUARANTINED) else 403
    raise HTTPError(status, verdict.reason)


def _blob_lookup() -> Select[*tuple[Any, ...]]:
    """One query for CachedFiles: the index (type, acl_read) and what it holds under the key.

    `hosted`: the upload's metadata sha256 ("" without one; NULL: not uploaded here);
    `mirrored`: whether this mirror holds the key (fetched it itself: the store is shared, and
    another index's blob under the same key is never this mirror's); `sidecar`: its PEP 658
    sidecar (the METADATA extracted when the mirror cached the wheel, else the upstream's one
    recorded), when this mirror holds that too; `quarantined`: whether the project (`name`) is
    quarantined there (PEP 792): the view then answers 404 with the reason; `block_vulnerable`
    and `guarded` (a cooldown or block rules may apply): the view decides.
    """
    index, user = Index.__table__.c, User.__table__.c
    file, project = File.__table__.c, Project.__table__.c
    held, sidecar = MirrorHolding.__table__.c, MirrorSidecar.__table__.c
    extracted = MirrorFile.__table__.c
    key: BindParameter[str] = bindparam("key")
    filename: BindParameter[str] = bindparam("filename")
    hosted = (
        select(func.coalesce(file.metadata_sha256, ""))
        .select_from(File.__table__.join(Project.__table__))
        .where(
            project.index_id == index.id,
            file.sha256 == key,
            file.filename == filename,
            func.coalesce(project.status, "") != QUARANTINED,
        )
        .limit(1)
        .scalar_subquery()
    )
    mirrored = exists().where(held.sha256 == key, held.index_id == index.id)
    own = (
        select(extracted.metadata_sha256)
        .where(
            extracted.index_id == index.id,
            extracted.sha256 == key,
            extracted.filename == filename,
            extracted.is_sidecar.is_(True),
            exists().where(held.index_id == index.id, held.sha256 == extracted.metadata_sha256),
        )
        .scalar_subquery()
    )
    upstream = (
        select(sidecar.metadata_sha256)
        .where(
            sidecar.index_id == index.id,
            sidecar.dist_sha256 == key,
            sidecar.filename == filename,
            exists().where(held.index_id == index.id, held.sha256 == sidecar.metadata_sha256),
        )
        .scalar_subquery()
    )
    page = MirrorPage.__table__.c
    quarantined = exists().where(
        page.index_id == index.id,
        page.normalized_name == bindparam("name"),
        page.status == QUARANTINED,
    )
    # Whether the supply-chain guard may refuse this index's files: then the view decides.
    guarded = (
        (index.mirror_min_age > 0)
        | (index.blocked_digest != "")
        | exists().where(ServerBlock.__table__.c.id.is_not(None))
    )
    return (
        select(
            index.id,
            index.type,
            index.acl_read,
            hosted,
            mirrored,
            func.coalesce(own, upstream),
            quarantined,
            index.block_vulnerable,
            guarded,
        )
        .select_from(Index.__table__.join(User.__table__))
        .where(user.username == bindparam("user"), index.name == bindparam("index"))
    )


def _is_public(acl_read: Any) -> bool:
    """acl_read as the database driver returns JSON (text or decoded); unset means everyone."""
    if acl_read is None:
        return True
    if isinstance(acl_read, str | bytes):
        return _is_public_text(acl_read)
    return ANONYMOUS in acl_read


# The same few values come back on every request: decoded once per process (bounded caches).
@functools.lru_cache(maxsize=256)
def _is_public_text(acl_read: str | bytes) -> bool:
    return ANONYMOUS in json.loads(acl_read)


@functools.lru_cache(maxsize=4096)
def _normalized_name(filename: str) -> str:
    """The project a distribution filename names (PEP 503), "" for no distribution."""
    try:
        return parse_filename(filename).normalized_name
    except InvalidDistribution:
        return ""


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return http_date(seconds)


Row = tuple[Any, ...]  # as the database driver returns it


@dataclass(frozen=True)
class Stored:
    """A stored file or sidecar of a public index, opened: what CachedFiles and the worker's
    event loop (app/http/serving.py) send, and what they count."""

    source: BinaryIO  # the open blob; whoever sends it closes it
    size: int
    headers: list[tuple[str, str]]  # the view's and the hooks' (without HSTS)
    route_kind: str  # "file" or "metadata"
    index_id: int
    blob_key: str
    is_mirror_hit: bool


class CachedFiles:
    """WSGI middleware in front of the Flask app: GET and HEAD of a stored file or sidecar of a
    public index on local disk are sent without a request context, hooks or ORM (sendfile
    through gunicorn's file wrapper); everything else (S3, a range, a revalidation, a file not
    cached yet, a restricted index) goes to release_file.

    The answer carries the view's headers and the hooks' (tests/test_files.py compares both),
    and a mirror hit is counted as the view counts it.
    """

    def __init__(self, app: Flask, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app
        self.local_path = getattr(app.extensions["pyshelf.storage"], "local_file", None)
        self.mirror = app.extensions["pyshelf.mirror"]
        self.lookup = FastRead(app.extensions["pyshelf.db"], _blob_lookup())
        self.fixed, self.hsts = hook_headers(app)
        self.accel_prefix = app.config["PYSHELF_SETTINGS"].accel_redirect_prefix
        self.storage = app.extensions["pyshelf.storage"]
        app.extensions["pyshelf.cached_files"] = self

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD") or any(name in environ for name in CONDITIONAL_HEADERS):
            return self.wsgi_app(environ, start_response)
        stored = self.open_stored(environ.get("PATH_INFO", ""), self.lookup.one)
        if stored is None:
            return self.wsgi_app(environ, start_response)
        environ["pyshelf.route_kind"] = stored.route_kind
        if stored.is_mirror_hit:
            environ["pyshelf.cache_hit"] = True
        self.note(stored)
        headers = stored.headers
        if environ.get("wsgi.url_scheme") == "https":
            headers = [*headers, self.hsts]
        if self.accel_prefix:  # nginx sends the bytes (see _send_accel)
            stored.source.close()
            uri = accel_redirect(self.accel_prefix, self.storage, stored.blob_key, "")
            kept = [h for h in headers if h[0] not in ("Content-Length", "Last-Modified")]
            start_response("200 OK", [*kept, ("Content-Length", "0"), ("X-Accel-Redirect", uri)])
            return []
        start_response("200 OK", headers)
        if method == "HEAD":
            stored.source.close()
            return []
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is None:
            return _chunks(stored.source)
        return wrapper(stored.source, 1 << 20)

    def open_stored(self, path: str, lookup: Callable[..., Row | None]) -> Stored | None:
        """The stored file at `path` (a PATH_INFO) of a public index on local disk, opened, with
        its headers; None when the view must answer. `lookup` runs _blob_lookup()."""
        match = FILE_PATH_RE.match(path) if self.local_path is not None and path.isascii() else None
        if match is None or self.local_path is None:
            return None
        found = self._find(lookup, *match.groups())
        if found is None:
            return None
        index_id, blob_key, is_mirror_hit = found
        try:
            source = open(self.local_path(blob_key), "rb")  # noqa: SIM115 - the sender closes it
        except FileNotFoundError:  # evicted, or lost: the view says what happened
            return None
        is_metadata = match[4].endswith(METADATA_SUFFIX)
        stat = os.fstat(source.fileno())
        headers = [
            (
                "Content-Type",
                f"{METADATA_MIMETYPE}; charset=utf-8"
                if is_metadata
                else "application/octet-stream",
            ),
            ("Content-Length", str(stat.st_size)),
            ("ETag", f'"{blob_key}"'),
            ("Cache-Control", CACHE_IMMUTABLE),
            ("Last-Modified", _http_date(int(stat.st_mtime))),
            ("Accept-Ranges", "bytes"),
            *self.fixed,
        ]
        kind = "metadata" if is_metadata else "file"
        return Stored(source, stat.st_size, headers, kind, index_id, blob_key, is_mirror_hit)

    def note(self, stored: Stored) -> None:
        """Count a mirror hit as the view does (it may write the counters to the database)."""
        if stored.is_mirror_hit:
            self.mirror.counters.add(stored.index_id, hits=1)
            self.mirror.cache.touch(stored.blob_key)

    def _find(
        self,
        lookup: Callable[..., Row | None],
        user: str,
        index: str,
        key: str,
        filename: str,
    ) -> tuple[int, str, bool] | None:
        """(index id, blob key, whether a mirror cached it) of a public index's stored file."""
        is_metadata = filename.endswith(METADATA_SUFFIX)
        dist_filename = filename.removesuffix(METADATA_SUFFIX)
        name = _normalized_name(dist_filename)
        row = lookup(user=user, index=index, key=key, filename=dist_filename, name=name)
        if row is None or not _is_public(row[2]) or row[6]:
            return None
        index_id, index_type, _, hosted, mirrored, sidecar, _, block_vulnerable, guarded = row
        if block_vulnerable or guarded:  # the view decides (advisories, the guard)
            return None
        if index_type != "mirror":
            if hosted is None:
                return None
            blob_key = hosted if is_metadata else key
            return (index_id, blob_key, False) if blob_key else None
        if is_metadata:
            return (index_id, sidecar, True) if sidecar else None
        if not name:  # the view answers 404 for a name that is no distribution
            return None
        return (index_id, key, True) if mirrored else None


def _chunks(source: Any) -> Iterable[bytes]:
    """A file in 1 MiB pieces, for servers without wsgi.file_wrapper."""
    with source:
        while chunk := source.read(1 << 20):
            yield chunk
