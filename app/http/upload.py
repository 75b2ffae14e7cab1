"""bp: uploads with the legacy API that twine speaks, POST /USER/INDEX/."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.core.dist_metadata import CoreMetadata, read_metadata
from app.core.dists import (
    FilenameInfo,
    Hashes,
    InvalidDistribution,
    check_digests,
    check_filetype,
    is_valid_project_name,
    normalize_name,
    parse_filename,
)
from app.data.db import begin_write, get_session
from app.data.models import File, FileProvenance, Index, Project, User
from app.http import metrics
from app.http.auth import require_user
from app.http.devpi import push_release
from app.http.errors import HTTPError, storage_failure
from app.http.spool import Spool
from app.http.web.docs import doc_upload
from app.services.cache_blobs import BlobLock
from app.services.indexes import get_index
from app.services.provenance import InvalidAttestation, check_attestations, provenance_object
from app.services.releases import add_file, may_upload, release_fields, store_sidecar
from app.services.status import CLOSED_TO_UPLOADS

log = logging.getLogger(__name__)
bp = Blueprint("upload", __name__)

FORM_MEMORY_BYTES = 16 << 20  # 16 MiB of text fields: long READMEs arrive as `description`
MAX_FORM_PARTS = 10_000  # classifiers and requires_dist repeat one key per value


class UploadRequest(Request):
    """Spools file parts to the data directory (same filesystem as the blobs) while hashing."""

    max_form_memory_size = FORM_MEMORY_BYTES
    max_form_parts = MAX_FORM_PARTS

    def _load_form_data(self) -> None:
        """Parse the form; raise the disk-full error of a spool now that the body is read."""
        super()._load_form_data()
        for spool in g.get("spools", ()):
            if spool.error is not None:
                log.error("upload to %s: the disk is full: %s", self.path, spool.error)
                metrics.count_write_failure("upload")
                raise spool.error

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> Any:
        spool = Spool(
            current_app.config["PYSHELF_SETTINGS"].tmp_dir,
            current_app.extensions["pyshelf.mirror"].cache.make_room,
            total_content_length,
        )
        g.setdefault("spools", []).append(spool)
        return spool


def _field(name: str) -> str | None:
    """A text field; "" and "UNKNOWN" count as absent (as PyPI's upload API)."""
    value = request.form.get(name)
    if value is None or value.strip() in ("", "UNKNOWN"):
        return None
    return value.strip()


def _check_form(info: FilenameInfo) -> None:
    name = _field("name")
    version = _field("version")
    if name is None or version is None:
        raise HTTPError(400, "Missing form field: 'name' and 'version' are required.")
    if not is_valid_project_name(name):
        raise HTTPError(400, f"'{name}' is an invalid value for Name.")
    if normalize_name(name) != info.normalized_name:
        raise HTTPError(
            400,
            f"Name '{name}' in the form does not match the filename {info.filename} "
            f"(project '{info.normalized_name}').",
        )
    try:
        same_version = Version(version) == Version(info.version)
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        raise HTTPError(400, f"'{version}' is an invalid value for Version (PEP 440).") from None
    if not same_version:
        raise HTTPError(
            400, f"Version '{version}' in the form does not match the filename {info.filename}."
        )


def _check_open(index: Index, info: FilenameInfo) -> None:
    """PEP 792: an archived or quarantined project takes no new files (as warehouse, a 400)."""
    status, reason = get_session().execute(
        select(Project.status, Project.status_reason).where(
            Project.index_id == index.id, Project.normalized_name == info.normalized_name
        )
    ).first() or (None, None)
    if status in CLOSED_TO_UPLOADS:
        why = f" ({reason})" if reason else ""
        raise HTTPError(
            400,
            f"Project {info.normalized_name} is {status} on {index.path}{why}; it takes no "
            "uploads until its status is set back to active (PEP 792).",
        )


def _existing(index: Index, info: FilenameInfo) -> File | None:
    return get_session().scalar(
        select(File)
        .join(Project)
        .where(
            Project.index_id == index.id,
            Project.normalized_name == info.normalized_name,
            File.filename == info.filename,
        )
    )


def _duplicate(index: Index, existing: File, hashes: Hashes) -> Response | None:
    """200 for an identical re-upload (retry), 409 for other bytes, None when volatile replaces."""
    if existing.sha256 == hashes.sha256:
        return Response("", 200)
    if index.volatile:
        return None
    raise HTTPError(
        409,
        f"File already exists ('{existing.filename}', with sha256 hash '{existing.sha256}'). "
        f"Index {index.path} is not volatile: upload a new version instead.",
    )


def _store(
    spool: Spool, metadata: CoreMetadata, info: FilenameInfo, added: list[str]
) -> str | None:
    """Put the file (and a wheel's METADATA sidecar) into the blob store; return its sha256.

    The keys that were not stored before go into `added`: a failure after this removes them.
    """
    storage = current_app.extensions["pyshelf.storage"]
    spool.finish()
    if not storage.exists(spool.hashes.sha256):
        added.append(spool.hashes.sha256)
    storage.commit_temp(spool.hashes.sha256, spool.path)
    return store_sidecar(storage, info, metadata, added)


def _record(
    index: Index,
    user: User,
    info: FilenameInfo,
    spool: Spool,
    meta: CoreMetadata,
    metadata_sha256: str | None,
    attestations: list[dict[str, Any]] | None,
) -> None:
    session = get_session()
    begin_write(session)
    project = session.scalar(
        select(Project).where(
            Project.index_id == index.id, Project.normalized_name == info.normalized_name
        )
    )
    if project is None:
        project = Project(index_id=index.id, name=meta.name, normalized_name=info.normalized_name)
        session.add(project)
        session.flush()
    if meta.summary:
        project.summary = meta.summary[:1000]  # the latest upload's, for search and listings
    old = session.scalar(
        select(File).where(File.project_id == project.id, File.filename == info.filename)
    )
    if old is not None:  # a volatile index replaces the file
        session.delete(old)
        session.flush()
    fields = release_fields(
        info, meta, spool.hashes, metadata_sha256=metadata_sha256, uploader=user.username
    )
    record = add_file(session, project, fields)
    if attestations:
        session.flush()  # the file's id
        provenance = provenance_object(attestations, user.username)
        session.add(FileProvenance(file_id=record.id, provenance=provenance))
    session.commit()


def _attestations(info: FilenameInfo, spool: Spool) -> list[dict[str, Any]] | None:
    """PEP 740's `attestations` field (twine and uv send it), checked against the file."""
    raw = request.form.get("attestations")
    if raw is None or not raw.strip():
        return None
    try:
        return check_attestations(raw, info.filename, spool.hashes.sha256)
    except InvalidAttestation as exc:
        raise HTTPError(400, f"Invalid attestations for {info.filename}: {exc}") from None


def _file_upload(index: Index, user: User) -> Response:
    protocol = _field("protocol_version") or "1"
    if protocol != "1":
        raise HTTPError(400, "Unknown protocol version.")
    part = request.files.get("content")
    if part is None or not part.filename:
        raise HTTPError(400, "Upload payload does not have a file.")
    spool = part.stream
    if not isinstance(spool, Spool):  # pragma: no cover - werkzeug always asks our factory
        raise HTTPError(400, "Invalid distribution file.")
    settings = current_app.config["PYSHELF_SETTINGS"]
    if spool.hashes.size > settings.max_upload_bytes:
        raise HTTPError(
            413, f"File too large. Limit is {settings.max_upload_bytes} bytes (MAX_UPLOAD_SIZE)."
        )
    try:
        info = parse_filename(part.filename)
        check_filetype(info, _field("filetype"), _field("pyversion"))
        _check_form(info)
        _check_open(index, info)
        check_digests(
            spool.hashes,
            sha256=_field("sha256_digest"),
            md5=_field("md5_digest"),
            blake2_256=_field("blake2_256_digest"),
            # devpi-client's upload (it logs in with X-Devpi-Auth) sends no digest, as
            # devpi-server needs none; the hashes computed here are recorded all the same.
            is_required=not request.headers.get("X-Devpi-Auth"),
        )
        attestations = _attestations(info, spool)
        existing = _existing(index, info)
        if existing is not None:
            early = _duplicate(index, existing, spool.hashes)
            if early is not None:
                return early
        meta = read_metadata(spool.path, info)
    except InvalidDistribution as exc:
        raise HTTPError(400, str(exc)) from None
    added: list[str] = []
    try:
        # Between storing the blob and committing its row, an eviction of the same bytes from
        # the mirror cache (or orphan removal) must wait: it would delete a blob we record.
        with BlobLock(settings).shared():
            metadata_sha256 = _store(spool, meta, info, added)
            try:
                _record(index, user, info, spool, meta, metadata_sha256, attestations)
            except IntegrityError:
                # Another worker stored the same filename between our check and our commit.
                get_session().rollback()
                existing = _existing(index, info)
                if existing is None:
                    raise
                early = _duplicate(index, existing, spool.hashes)
                if early is not None:
                    return early
                raise
    except Exception as exc:
        # A full disk (the blob, the sidecar, the database) or any other failure: no row, so
        # no blob that this upload added either (the errors module answers 507 with a reason).
        get_session().rollback()
        current_app.extensions["pyshelf.mirror"].cache.discard_unrecorded(added)
        failure = storage_failure(exc)
        if failure is not None and failure.status == 507:
            log.error("upload to %s: the disk is full: %s", index.path, exc)
            metrics.count_write_failure("upload")
        raise
    log.info(
        "upload %s %s by %s (%d bytes)", index.path, info.filename, user.username, spool.hashes.size
    )
    return Response("", 200)


@bp.post("/<user>/<index>/")
@bp.post("/<user>/<index>")
def upload(user: str, index: str) -> Response:
    """Accept a distribution (`:action=file_upload`) from twine, uv, poetry, pdm or hatch; a
    JSON body is a devpi push (app/http/devpi.py)."""
    found = get_index(get_session(), user, index)
    if found is None:
        raise HTTPError(404, f"Index {user}/{index} does not exist.")
    uploader = require_user()  # credentials come in the header: check before reading the body
    if request.is_json:  # devpi push as a POST (devpi-server takes both): reads the source
        return push_release(found)
    if found.is_mirror:
        raise HTTPError(
            403,
            f"Index {found.path} is a mirror and takes no uploads; "
            "upload to a stage index (for example admin/dev).",
        )
    if not may_upload(found, uploader):
        raise HTTPError(
            403, f"The user '{uploader.username}' isn't allowed to upload to index '{found.path}'."
        )
    action = _field(":action") or request.args.get(":action")
    if action == "file_upload":
        return _file_upload(found, uploader)
    if action == "doc_upload":  # devpi-client: a zip of built HTML as `content`
        return doc_upload(found, uploader)
    if action in ("submit", "submit_pkg_info"):
        raise HTTPError(
            410,
            "Project pre-registration is no longer required or supported, "
            "upload your files instead.",
        )
    if action is None:
        raise HTTPError(400, "Missing ':action' field: expected 'file_upload'.")
    raise HTTPError(400, f"Unknown ':action' {action!r}: expected 'file_upload'.")


def init_app(app: Flask) -> None:
    """Spool uploads to the data directory and delete what a request left behind."""
    app.request_class = UploadRequest

    @app.teardown_request
    def _discard_spools(_exc: BaseException | None) -> None:
        for spool in g.pop("spools", ()):
            spool.discard()
