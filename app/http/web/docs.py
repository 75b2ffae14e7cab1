"""Documentation sets: check an uploaded zip of HTML, keep it as a blob, serve files from it.

A doc set is one zip per index, project and version (a re-upload replaces it). The zip is
stored as it came, in the blob store under its sha256, and files are read out of it on each
request: nothing is ever unpacked to disk, so a member name cannot reach the filesystem.
Uploads are refused (400) when the zip is unreadable, encrypted, has absolute or `..` member
names, too many members (DOCS_MAX_FILES) or too many uncompressed bytes (DOCS_MAX_SIZE,
which stops zip bombs: zipfile never yields more than a member's declared size), or no
index.html at its top (after stripping one common top folder, as Sphinx and MkDocs zips of
`html/` or `site/` have).

Docs are HTML and JavaScript from uploaders. Every `+doc` response carries a sandboxing
Content-Security-Policy without `allow-same-origin`: the page runs in an opaque origin, so its
scripts cannot read this site's cookies or pages, and its requests to the site are cross-site
(the SameSite=Lax session cookie is not sent), so they cannot act as the viewer.

That also keeps the cookie from the stylesheets, scripts and images of docs on an index that
is not public. A logged-in browser is therefore sent to a *grant* URL, `+doc/+grant/GRANT/PATH`:
GRANT is signed with SECRET_KEY for the user, index, project and version, valid for
DOC_GRANT_SECONDS, and the docs' relative links resolve below it. Each request with a grant
checks again that the user may read the index; an expired grant starts over at `+doc/PATH`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mimetypes
import posixpath
import zipfile
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote

import itsdangerous
from flask import Response, current_app, redirect, request
from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage
from werkzeug.wrappers import Response as BaseResponse  # redirect()'s; Flask's subclasses it

from app.core.dists import normalize_name
from app.data.db import begin_write, get_session
from app.data.models import DocSet, Index, Project, User, utcnow
from app.http.errors import HTTPError
from app.http.spool import Spool
from app.services.cache_blobs import BlobLock
from app.services.docs import INDEX_HTML, InvalidDocs, inspect_zip, member_path
from app.services.fulltext import queue_docset
from app.services.indexes import Reader, may_read, readable_order

log = logging.getLogger(__name__)

DOC_CSP = (
    "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox allow-forms "
    "allow-downloads; default-src 'self' 'unsafe-inline' data:; base-uri 'none'; "
    "form-action 'self'"
)
CHUNK_BYTES = 256 << 10  # 256 KiB per read from the zip
# mimetypes depends on the machine's /etc/mime.types; these are the types docs need.
CONTENT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
    ".pdf": "application/pdf",
    ".wasm": "application/wasm",
}
GRANT_PREFIX = "+grant/"  # +doc/+grant/GRANT/PATH
DOC_GRANT_SECONDS = 43_200  # 12 hours: a day's reading; then the browser's cookie renews it
DOC_GRANT_SALT = "pyshelf.doc-grant"  # itsdangerous namespace, not a secret


def normalize_version(version: str) -> str:
    """The PEP 440 normal form of a version; HTTPError 400 when it is not one."""
    try:
        return str(Version(version))
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        raise HTTPError(
            400, f"'{version[:100]}' is an invalid value for Version (PEP 440)."
        ) from None


# --- upload ----------------------------------------------------------------------------------


def store_docs(index: Index, project: str, version: str, user: User, part: FileStorage) -> DocSet:
    """Check and store an uploaded documentation zip for `project` `version` on `index`."""
    if index.is_mirror:
        raise HTTPError(403, f"Index {index.path} is a mirror and takes no documentation.")
    session = get_session()
    normalized = normalize_name(project)
    version = normalize_version(version)
    exists = session.scalar(
        select(Project.id).where(
            Project.index_id == index.id, Project.normalized_name == normalized
        )
    )
    if exists is None:
        raise HTTPError(
            400,
            f"Project {normalized} does not exist on index {index.path}: upload a release first.",
        )
    settings = current_app.config["PYSHELF_SETTINGS"]
    storage = current_app.extensions["pyshelf.storage"]
    stream = part.stream
    if not isinstance(stream, Spool):  # pragma: no cover - UploadRequest always spools files
        raise HTTPError(400, "Upload payload does not have a file.")
    stream.finish()
    path, sha256, size = stream.path, stream.hashes.sha256, stream.hashes.size
    if size > settings.max_upload_bytes:
        raise HTTPError(
            413, f"File too large. Limit is {settings.max_upload_bytes} bytes (MAX_UPLOAD_SIZE)."
        )
    try:
        info = inspect_zip(
            path, max_bytes=settings.docs_max_bytes, max_files=settings.docs_max_files
        )
    except InvalidDocs as exc:
        raise HTTPError(400, str(exc)) from None
    values = {
        "sha256": sha256,
        "size": size,
        "uncompressed_bytes": info.uncompressed_bytes,
        "entry_count": info.entry_count,
        "path_prefix": info.path_prefix,
        "uploader": user.username,
        "uploaded_at": utcnow(),
    }
    # Orphan removal (verify --repair) must not delete the blob between store and record.
    with BlobLock(settings).shared():
        if not storage.exists(sha256):
            storage.commit_temp(sha256, path)
        try:
            docset = _record(session, index, normalized, version, values)
        except IntegrityError:  # another worker created the same doc set first: replace it
            session.rollback()
            docset = _record(session, index, normalized, version, values)
    log.info("docs %s %s %s by %s (%d bytes)", index.path, normalized, version, user.username, size)
    return docset


def _record(
    session: Session,
    index: Index,
    normalized: str,
    version: str,
    values: dict[str, Any],
) -> DocSet:
    begin_write(session)
    docset = session.scalar(
        select(DocSet).where(
            DocSet.index_id == index.id,
            DocSet.normalized_name == normalized,
            DocSet.version == version,
        )
    )
    if docset is None:
        docset = DocSet(index_id=index.id, normalized_name=normalized, version=version)
        session.add(docset)
    for key, value in values.items():
        setattr(docset, key, value)
    queue_docset(session, docset)  # indexed after the response (app/services/fulltext.py)
    session.commit()
    return docset


def doc_upload(index: Index, user: User) -> Response:
    """`:action=doc_upload` on POST /USER/INDEX/ (devpi-client): `name`, `version`, `content`."""
    name = (request.form.get("name") or "").strip()
    version = (request.form.get("version") or "").strip()
    if not name or not version:
        raise HTTPError(400, "Missing form field: 'name' and 'version' are required.")
    part = request.files.get("content")
    if part is None or not part.filename:
        raise HTTPError(400, "Upload payload does not have a file: send the zip as 'content'.")
    docset = store_docs(index, name, version, user, part)
    return Response(
        f"Documentation of {docset.normalized_name} {docset.version} stored on {index.path}.\n",
        200,
        mimetype="text/plain",
    )


# --- lookup and serving ----------------------------------------------------------------------


def doc_sets(
    session: Session, index: Index, normalized: str, reader: Reader | None = None
) -> dict[str, tuple[DocSet, Index]]:
    """The doc sets of a project by version, from the index and its stage bases (first wins;
    with a `reader`, only from the indexes it may read)."""
    found: dict[str, tuple[DocSet, Index]] = {}
    for current in readable_order(session, index, reader):
        if current.is_mirror:
            continue
        for docset in session.scalars(
            select(DocSet).where(
                DocSet.index_id == current.id, DocSet.normalized_name == normalized
            )
        ):
            found.setdefault(docset.version, (docset, current))
    return found


def latest_version(versions: list[str]) -> str | None:
    """The highest of some normalized versions."""
    return max(versions, key=Version, default=None)


def find_docset(
    session: Session, index: Index, normalized: str, version: str, reader: Reader | None = None
) -> tuple[DocSet, Index] | None:
    """The doc set for a version (`latest`: the highest version that has docs), or None."""
    found = doc_sets(session, index, normalized, reader)
    if version == "latest":
        latest = latest_version(list(found))
        return found[latest] if latest else None
    try:
        return found.get(str(Version(version)))
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        return None


def _grant_serializer() -> itsdangerous.URLSafeTimedSerializer:
    return itsdangerous.URLSafeTimedSerializer(
        current_app.config["SECRET_KEY"], salt=DOC_GRANT_SALT
    )


def new_grant(index: Index, normalized: str, version: str, user: User) -> str:
    """A grant for `user` to read the docs of one project version on `index` without cookies."""
    return _grant_serializer().dumps([index.id, normalized, version, user.id])


def reader_of_grant(
    session: Session, grant: str, index: Index, normalized: str, version: str
) -> Reader | None:
    """Who a grant was signed for, if it is valid for these docs and they may still read the
    index; else None (forged, expired, for other docs, or the user lost access)."""
    try:
        payload = _grant_serializer().loads(grant, max_age=DOC_GRANT_SECONDS)
    except itsdangerous.BadData:
        return None
    if not isinstance(payload, list) or payload[:3] != [index.id, normalized, version]:
        return None
    user = session.get(User, payload[3]) if len(payload) == 4 else None
    if user is None or not may_read(index, Reader(user)):
        return None
    return Reader(user)


def content_type(path: str) -> str:
    """The Content-Type a documentation file is served with."""
    suffix = posixpath.splitext(path)[1].lower()
    known = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0]
    return known or "application/octet-stream"


def _members(archive: zipfile.ZipFile, prefix: str) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if not info.filename or info.is_dir():  # is_dir() fails on an empty name
            continue
        with contextlib.suppress(InvalidDocs):  # checked at upload; never serve a bad name
            path = member_path(info.filename)
            if path.startswith(prefix):
                members[path[len(prefix) :]] = info
    return members


def serve(docset: DocSet, path: str, base_url: str) -> BaseResponse:
    """One file of a doc set (a directory serves its index.html), with the sandboxing CSP."""
    storage = current_app.extensions["pyshelf.storage"]
    wanted = posixpath.normpath("/" + path).lstrip("/") if path else ""
    is_dir = path == "" or path.endswith("/")
    try:
        blob = storage.open(docset.sha256)
    except FileNotFoundError:
        raise HTTPError(404, "The documentation zip is missing from the blob store.") from None
    try:
        archive = zipfile.ZipFile(blob)
        members = _members(archive, docset.path_prefix)
        member = f"{wanted}/{INDEX_HTML}".lstrip("/") if is_dir else wanted
        info = members.get(member)
        if info is None and not is_dir and f"{wanted}/{INDEX_HTML}" in members:
            blob.close()
            return redirect(f"{base_url}{quote(wanted)}/", 301)  # so relative links resolve
        if info is None:
            raise HTTPError(404, f"No such file in the documentation: {path[:200]}")
        response = _file_response(docset, member, archive, info, blob)
    except BaseException:
        blob.close()
        raise
    return response


def _file_response(
    docset: DocSet, member: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, blob: IO[bytes]
) -> Response:
    etag = hashlib.sha256(f"{docset.sha256}:{member}".encode()).hexdigest()[:40]
    headers = {
        "Content-Security-Policy": DOC_CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",  # a re-upload replaces the docs; the ETag revalidates
        "Referrer-Policy": "no-referrer",
    }
    if etag in request.if_none_match:
        blob.close()
        response = Response(status=304, headers=headers)
        response.set_etag(etag)
        return response

    def chunks() -> Iterator[bytes]:
        try:
            with archive.open(info) as source:
                while chunk := source.read(CHUNK_BYTES):
                    yield chunk
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:  # corrupt: stop
            log.error("cannot read %s from doc zip %s: %s", member, docset.sha256, exc)
        finally:
            blob.close()

    body: bytes | Iterator[bytes]
    if request.method == "HEAD":  # werkzeug drops the body; don't open the member at all
        blob.close()
        body = b""
    elif info.file_size <= CHUNK_BYTES:
        body = b"".join(chunks())  # small files in one piece
    else:
        body = chunks()
    response = Response(body, content_type=content_type(member), headers=headers)
    response.content_length = len(body) if isinstance(body, bytes) and body else info.file_size
    response.set_etag(etag)
    return response
