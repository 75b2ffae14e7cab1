"""Release rules: who may change what, a File row with its PEP 658 sidecar, the files of a
version, yanking (PEP 592) and deleting files, projects' versions and whole indexes,
refreshing mirrored pages; the HTTP layer maps the errors (app/http/errors.py).

Deleting never removes blobs (another file or index may share the bytes): the records go, so
nothing links to them any more; orphan removal (`pyshelf cache`) reclaims the space.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
from collections.abc import Mapping
from typing import Any, Protocol

from packaging.version import Version
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.core.dist_metadata import CoreMetadata
from app.core.dists import FilenameInfo, normalize_name
from app.core.storage import Storage
from app.data.models import DocSet, File, Index, MirrorBlob, MirrorHolding, Project, User, utcnow
from app.services.indexes import Reader, dependents, get_index_by_path, may_read, readable_order
from app.services.indexes_view import MirrorSource

MAX_VERSION_SHOWN_CHARS = 100  # a 4300-digit "version" must not fill the status line
# What a File row holds besides its id and project: a copy (promote) takes all of it, and a
# bundle carries it (app/ops/bundle_export.py).
FILE_FIELDS = (
    "filename",
    "version",
    "filetype",
    "pyversion",
    "sha256",
    "blake2_256",
    "md5",
    "size",
    "requires_python",
    "yanked",
    "yanked_reason",
    "metadata_sha256",
    "core_metadata",
    "uploader",
    "uploaded_at",
)


class ReleaseError(Exception):
    """A refused change to releases or indexes; the message is the reason a person reads."""


class InvalidRequest(ReleaseError):
    """The request names something malformed (a version that is not PEP 440)."""


class NotAllowed(ReleaseError):
    """The caller may not make this change."""


class NotFound(ReleaseError):
    """The index has no such project, version or file."""


class InUse(ReleaseError):
    """Other indexes list this one among their bases."""

    def __init__(self, message: str, used_by: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.used_by = used_by


# --- who may change what ----------------------------------------------------------------------


def may_change(index: Index, user: User) -> bool:
    """Yank, set a project's status or delete releases: superusers, the owner and uploaders."""
    return (
        user.is_superuser or user.id == index.owner_id or user.username in (index.acl_upload or ())
    )


def may_remove(index: Index, user: User, *, force: bool = False) -> bool:
    """Delete released files: as `may_change`, on volatile indexes, or by a superuser's `force`."""
    return may_change(index, user) and (index.volatile or (force and user.is_superuser))


def may_upload(index: Index, user: User) -> bool:
    """Superusers, and users named in acl_upload (`:ANONYMOUS:` is not honoured for uploads)."""
    return user.is_superuser or user.username in (index.acl_upload or ())


def may_configure(index: Index, user: User) -> bool:
    """Superusers and the index's owner."""
    return user.is_superuser or user.id == index.owner_id


def shown_bases(session: Session, index: Index, reader: Reader) -> list[str]:
    """The bases a reader is told of: every one to those who may configure the index, else
    those they may read (a stage shows nothing of a base a stranger may not read)."""
    bases = list(index.bases or [])
    if reader.user is not None and may_configure(index, reader.user):
        return bases
    shown = []
    for path in bases:
        base = get_index_by_path(session, path)
        if base is None or may_read(base, reader):
            shown.append(path)
    return shown


# --- a File row and its sidecar -----------------------------------------------------------------


class Digests(Protocol):
    """A release file's hashes and size (app/core/dists.py Hashes has them)."""

    @property
    def sha256(self) -> str: ...
    @property
    def blake2_256(self) -> str: ...
    @property
    def md5(self) -> str: ...
    @property
    def size(self) -> int: ...


def store_sidecar(
    storage: Storage, info: FilenameInfo, meta: CoreMetadata, added: list[str] | None = None
) -> str | None:
    """Store a wheel's METADATA as its PEP 658 sidecar blob and return its sha256 (None for an
    sdist: PEP 658 sidecars are for wheels only). A key stored anew goes into `added`."""
    if info.filetype != "bdist_wheel":
        return None
    metadata_sha256 = hashlib.sha256(meta.raw).hexdigest()
    if not storage.exists(metadata_sha256):
        if added is not None:
            added.append(metadata_sha256)
        storage.save(metadata_sha256, io.BytesIO(meta.raw))
    return metadata_sha256


def release_fields(
    info: FilenameInfo,
    meta: CoreMetadata,
    digests: Digests,
    *,
    metadata_sha256: str | None,
    uploader: str,
    uploaded_at: dt.datetime | None = None,
    yanked: bool | str = False,
) -> dict[str, Any]:
    """The FILE_FIELDS of a release file read from its bytes (an upload, an import): names from
    the filename, the hashes, core metadata and the sidecar `store_sidecar` stored."""
    return {
        "filename": info.filename,
        "version": info.version,
        "filetype": info.filetype,
        "pyversion": info.pyversion,
        "sha256": digests.sha256,
        "blake2_256": digests.blake2_256,
        "md5": digests.md5,
        "size": digests.size,
        "requires_python": meta.requires_python,
        "yanked": bool(yanked),
        "yanked_reason": yanked if isinstance(yanked, str) and yanked else None,
        "metadata_sha256": metadata_sha256,
        "core_metadata": {k: v for k, v in dataclasses.asdict(meta).items() if k != "raw"},
        "uploader": uploader,
        "uploaded_at": uploaded_at or utcnow(),
    }


def add_file(session: Session, project: Project, fields: Mapping[str, Any]) -> File:
    """Add a File row to `project` (the caller commits): every one of FILE_FIELDS, from
    `release_fields` (uploads, imports) or another row (a promotion's copy)."""
    missing = [name for name in FILE_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"a File row needs {', '.join(missing)}")
    record = File(project_id=project.id, **{name: fields[name] for name in FILE_FIELDS})
    session.add(record)
    return record


def copied_fields(record: File) -> dict[str, Any]:
    """A File row's FILE_FIELDS, for a copy of it (`add_file`)."""
    return {name: getattr(record, name) for name in FILE_FIELDS}


# --- the files of a version -------------------------------------------------------------------


def parse_version(version: str, *, shown_chars: int | None = MAX_VERSION_SHOWN_CHARS) -> Version:
    """`version` as a PEP 440 version, or InvalidRequest naming its first `shown_chars`."""
    try:
        return Version(version)
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        shown = version[:shown_chars]
        raise InvalidRequest(f"'{shown}' is not a valid version (PEP 440).") from None


def version_files(
    session: Session,
    index: Index,
    project: str,
    version: str,
    *,
    filename: str | None = None,
    shown_chars: int | None = MAX_VERSION_SHOWN_CHARS,
) -> list[File]:
    """The files of `project` `version` on `index` (only `filename` when given), or NotFound."""
    wanted = parse_version(version, shown_chars=shown_chars)
    files = [
        f
        for f in session.scalars(
            select(File)
            .join(Project)
            .where(Project.index_id == index.id, Project.normalized_name == normalize_name(project))
        )
        if Version(f.version) == wanted
    ]
    if not files:
        raise NotFound(f"{project} {version} has no files on {index.path}.")
    if filename:
        files = [f for f in files if f.filename == filename]
        if not files:
            raise NotFound(f"No file {filename} in {project} {version} on {index.path}.")
    return files


def set_yanked(files: list[File], yanked: bool, reason: str | None) -> None:
    """Yank (with `reason`) or un-yank `files` (PEP 592); the caller commits."""
    for record in files:
        record.yanked = yanked
        record.yanked_reason = reason if yanked else None


def has_version(session: Session, project_id: int, version: str) -> bool:
    """Whether the project still has a file of `version` (compared as PEP 440 versions)."""
    wanted = Version(version)
    versions = session.scalars(select(File.version).where(File.project_id == project_id))
    return any(Version(v) == wanted for v in versions)


# --- refreshing -------------------------------------------------------------------------------


def refresh_project(
    session: Session,
    index: Index,
    normalized_name: str,
    mirror: MirrorSource,
    reader: Reader | None,
) -> list[str]:
    """Make the mirrors behind `index` that `reader` may read fetch a project's page again on
    its next request (devpi's refresh, the web's Refresh button); the paths of those that had
    it cached. InvalidRequest when the index has no mirror in its bases."""
    mirrors = [i for i in readable_order(session, index, reader) if i.is_mirror]
    if not mirrors:
        raise InvalidRequest(f"{index.path} has no mirror in its bases; nothing to refresh.")
    return [i.path for i in mirrors if mirror.refresh(i, normalized_name)]


# --- deleting ---------------------------------------------------------------------------------


def delete_files(session: Session, index: Index, files: list[File]) -> bool:
    """Delete release files of one project on `index` (the caller commits); say whether the
    project is still there.

    A version's docs go with its last file, and the project with its last file and doc set
    (the web UI's delete, and devpi-client's DELETEs in app/http/devpi.py).
    """
    project_id = files[0].project_id
    normalized = files[0].project.normalized_name
    versions = {f.version for f in files}
    for record in files:
        session.delete(record)
    session.flush()
    for version in versions:
        if not has_version(session, project_id, version):
            session.execute(
                delete(DocSet).where(
                    DocSet.index_id == index.id,
                    DocSet.normalized_name == normalized,
                    DocSet.version == str(Version(version)),
                )
            )
    remaining = session.scalar(select(func.count()).where(File.project_id == project_id))
    has_docs = session.scalar(
        select(func.count()).where(
            DocSet.index_id == index.id, DocSet.normalized_name == normalized
        )
    )
    if remaining or has_docs:
        return True
    session.execute(delete(Project).where(Project.id == project_id))
    return False


def check_deletable(session: Session, paths: list[str]) -> None:
    """Raise InUse when another index lists one of `paths` among its bases."""
    used = dependents(session, paths)
    if used:
        what = "; ".join(f"{base} is a base of {', '.join(of)}" for base, of in used.items())
        raise InUse(f"{what}; change those first.", used)


def delete_index(session: Session, index: Index) -> None:
    """Delete `index` with everything in it, in the caller's write transaction (it commits).

    Refused (InUse) while another index uses it as a base. The ORM deletes its projects and
    files, so full-text search drops their documents at commit (app/services/fulltext.py); the
    database's ON DELETE CASCADE removes what else names the index (tokens limited to it,
    doc sets, mirror pages and holdings, promotions) and its triggers forget the cached pages
    built from it (migration 0005). A mirror's cached blobs that another mirror also holds stay
    counted for the cache cap, under that mirror (`_hand_over_blobs`).
    """
    check_deletable(session, [index.path])
    _delete(session, index)


def delete_owned_indexes(session: Session, owner: User) -> None:
    """Delete every index of `owner` as `delete_index` does, before the user goes (or InUse)."""
    owned = list(owner.indexes)
    check_deletable(session, [i.path for i in owned])
    for index in owned:
        _delete(session, index)
    session.expire(owner, ["indexes"])


def _delete(session: Session, index: Index) -> None:
    if index.is_mirror:
        _hand_over_blobs(session, index)
    session.delete(index)
    session.flush()


def _hand_over_blobs(session: Session, index: Index) -> None:
    """Give the cap's row of each blob `index` recorded to another mirror that holds it.

    `mirror_blobs` counts a blob once, under the first mirror that cached it; without this the
    row would go with the index (ON DELETE CASCADE) while the other mirror keeps serving the
    blob, which the cap would then never count nor evict (app/services/cache.py).
    """
    recorded = select(MirrorBlob.sha256).where(MirrorBlob.index_id == index.id)
    heirs = session.execute(
        select(MirrorHolding.sha256, func.min(MirrorHolding.index_id))
        .where(MirrorHolding.sha256.in_(recorded), MirrorHolding.index_id != index.id)
        .group_by(MirrorHolding.sha256)
    ).all()
    if heirs:
        session.execute(
            update(MirrorBlob), [{"sha256": key, "index_id": heir} for key, heir in heirs]
        )
