"""bp: release files and their PEP 658 metadata at /USER/INDEX/+f/SHA256/FILENAME."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, redirect, request, send_file
from sqlalchemy import select

from app.auth import require_read
from app.db import get_session
from app.errors import HTTPError
from app.indexes import get_index
from app.models import File, Index, Project

bp = Blueprint("files", __name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMMUTABLE_SECONDS = 365_000_000  # R49: about 11.5 years, as PyPI
CACHE_IMMUTABLE = f"public, max-age={IMMUTABLE_SECONDS}, immutable"
METADATA_SUFFIX = ".metadata"


def send_blob(
    sha256: str, filename: str, *, mimetype: str = "application/octet-stream"
) -> Response:
    """Send a stored blob with Range, ETag and immutable caching; never Content-Encoding (R38)."""
    storage = current_app.extensions["pyshelf.storage"]
    local_path = getattr(storage, "local_path", None)
    if local_path is None and hasattr(storage, "read_range"):
        return _send_remote(storage, sha256, filename, mimetype)
    try:
        source: Any = local_path(sha256) if local_path else storage.open(sha256)
        response = send_file(
            source,
            mimetype=mimetype,
            download_name=filename,
            conditional=True,  # Range, If-Range, If-None-Match (R42-R44)
            etag=sha256,
            max_age=IMMUTABLE_SECONDS,
            last_modified=None,
        )
    except FileNotFoundError:
        raise HTTPError(404, f"File {filename} is missing from the blob store.") from None
    response.headers["Cache-Control"] = CACHE_IMMUTABLE
    response.headers.pop("Content-Disposition", None)
    return response


def _send_remote(storage: Any, sha256: str, filename: str, mimetype: str) -> Response:
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
    # 304 and 412 from the ETag, 206 with Content-Range, or 416 (raised) (R42-R44).
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
def release_file(user: str, index: str, sha256: str, filename: str) -> Response:
    """A release file, or its `.metadata` sidecar (PEP 658/714), to those who may read the
    index; only the index's own files (never another index's blob with the same hash)."""
    found = get_index(get_session(), user, index)
    if found is None or not SHA256_RE.match(sha256) or "/" in filename:
        raise HTTPError(404, f"No such file: {filename}")
    # A file's bytes are the same for every reader: only this index's own acl_read counts.
    require_read(found, with_bases=False)
    is_metadata = filename.endswith(METADATA_SUFFIX)
    dist_filename = filename[: -len(METADATA_SUFFIX)] if is_metadata else filename
    if found.is_mirror:
        mirror = current_app.extensions["pyshelf.mirror"]
        return mirror.serve_file(
            found,
            sha256,
            dist_filename,
            is_metadata=is_metadata,
            is_head=request.method == "HEAD",
        )
    record = _hosted_file(found, sha256, dist_filename)
    if record is None:
        raise HTTPError(404, f"No such file on {found.path}: {filename}")
    if not is_metadata:
        return send_blob(record.sha256, record.filename)
    if not record.metadata_sha256:
        raise HTTPError(404, f"No core metadata for {dist_filename} (only wheels have it).")
    return send_blob(record.metadata_sha256, filename, mimetype="text/plain; charset=utf-8")
