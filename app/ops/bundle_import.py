"""`bundle import`: merge a bundle into a running pyshelf, all or nothing per project.

The import works on the data dir and database as every ops command does, while gunicorn
serves: what it commits is what the next request reads, and the page-cache triggers (migration
0005, 0012) forget the stored pages of every project it changes. In order:

1. The manifest is checked against the archive (app/ops/bundle_format.py): a truncated or
   foreign archive, a blob missing or of another size, is refused before anything is read.
2. Replays are refused: each project of an index records the last bundle imported into it
   (`bundle_imports`: id and creation time). A project already imported from this very bundle is
   skipped (a re-import changes nothing; an interrupted import resumes where it stopped); a
   bundle made before the one a project was last imported from is refused whole, so an older
   page (a file not yet yanked, say) never replaces a newer one. A file the index has under the
   same name with other bytes is a mismatch, refused whole too.
3. Every blob the remaining projects need is streamed from the archive into a temp file of
   the blob store while it is hashed; one byte off its manifest sha256 refuses the bundle and
   the temp files go. Blobs the store has already are not copied again (a resumed import).
4. Then, per project and in one transaction: the blobs move into place, mirror pages merge
   (files the index had stay: users installed from them), holdings and core metadata are
   recorded, stage releases and docs are added, and the project records this bundle.

A mirror index that does not exist is created as an offline mirror (never asks a network).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.dists import normalize_name
from app.core.progress import Progress
from app.core.storage import Storage
from app.core.storage_choice import make_storage
from app.data.db import Database, begin_write
from app.data.models import (
    BundleImport,
    DocSet,
    File,
    Index,
    MirrorBlob,
    MirrorFile,
    MirrorHolding,
    MirrorPage,
    Project,
    utcnow,
)
from app.ops.bundle_format import CHUNK_BYTES, BundleError, Manifest, format_time, open_bundle
from app.ops.prepare import find_user
from app.services.fulltext import drain, index_project, index_stored_page
from app.services.fulltext_docs import index_stored_docset
from app.services.indexes import get_index_by_path
from app.services.indexes_config import create_index
from app.services.releases import add_file

log = logging.getLogger("pyshelf")

PAGE_KEYS = (  # what a MirrorPage entry keeps (app/services/mirror/pages.py _entry)
    "filename",
    "version",
    "url",
    "sha256",
    "requires_python",
    "yanked",
    "upload_time",
    "size",
    "metadata_sha256",
)


@dataclass
class ImportSummary:
    """What an import did."""

    bundle_id: str
    created_at: str
    projects: int = 0
    already: int = 0  # imported from this bundle before: unchanged
    files: int = 0
    blobs_stored: int = 0
    blobs_reused: int = 0  # the store had them (uploads, an interrupted import)
    bytes: int = 0
    seconds: float = 0.0
    indexes_created: list[str] = field(default_factory=list)


@dataclass
class _Work:
    """One project to import: into which index (by path), its part of the manifest."""

    kind: str  # "mirror" or "stage"
    index_path: str
    project: dict[str, Any]

    @property
    def name(self) -> str:
        return normalize_name(self.project["name"])

    def blobs(self) -> list[str]:
        keys = [f["sha256"] for f in self.project.get("files") or []]
        keys += [
            f["metadata_blob"] for f in self.project.get("files") or [] if f.get("metadata_blob")
        ]
        keys += [d["sha256"] for d in self.project.get("docs") or []]
        return keys


def import_bundle(
    settings: Settings, path: Path, *, into: str | None = None, progress: bool = True
) -> ImportSummary:
    """Verify the bundle at `path` and merge it: mirror projects into `into` (default: the
    mirror it was exported from), stage releases into their stage; BundleError on refusal."""
    started = time.monotonic()
    archive, manifest, members = open_bundle(Path(path))
    summary = ImportSummary(manifest.bundle_id, format_time(manifest.created_at))
    database = Database(settings.database_url)
    storage = make_storage(settings)
    try:
        works = [
            _Work("mirror", into or part["index"], project)
            for part in manifest.mirrors
            for project in part["projects"]
        ] + [
            _Work("stage", part["index"], project)
            for part in manifest.stages
            for project in part["projects"]
        ]
        with database.session() as session:
            todo = _plan(session, manifest, works, summary)
        needed = sorted(
            {key for work in todo for key in work.blobs()}, key=lambda k: members[k].offset
        )
        staged = _stage_blobs(archive, members, storage, needed, summary, progress)
        try:
            with database.session() as session:
                _create_indexes(session, todo, summary)
            for work in todo:
                import_project(database, storage, manifest, work, staged)
                summary.projects += 1
                summary.files += len(work.project.get("files") or [])
        finally:
            for tmp_path in staged.values():
                tmp_path.unlink(missing_ok=True)
        drain(database, storage)  # the releases its files queued for search
    finally:
        archive.close()
        database.engine.dispose()
    summary.seconds = time.monotonic() - started
    return summary


def _plan(
    session: Session, manifest: Manifest, works: list[_Work], summary: ImportSummary
) -> list[_Work]:
    """The projects to import; BundleError when any would be a replay or a mismatch."""
    todo: list[_Work] = []
    problems: list[str] = []
    for work in works:
        index = get_index_by_path(session, work.index_path)
        if index is None:
            if find_user(session, work.index_path.split("/")[0]) is None:
                problems.append(f"{work.index_path}: no such index, and no user to create it for")
            todo.append(work)
            continue
        if index.is_mirror != (work.kind == "mirror"):
            problems.append(
                f"{work.index_path} is a {index.type}, the bundle holds {work.kind} projects for it"
            )
            continue
        done = session.get(BundleImport, (index.id, work.name))
        if done is not None and done.bundle_id == manifest.bundle_id:
            summary.already += 1
            continue
        if done is not None and done.bundle_created_at > manifest.created_at:
            problems.append(
                f"{work.index_path} {work.name} was imported from a newer bundle "
                f"({done.bundle_id[:12]}, made {format_time(done.bundle_created_at)}): "
                f"this one (made {format_time(manifest.created_at)}) is a replay"
            )
            continue
        problems += _conflicts(session, index, work)
        todo.append(work)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BundleError(f"bundle refused, nothing imported: {problems[0]}{more}")
    return todo


def _conflicts(session: Session, index: Index, work: _Work) -> list[str]:
    """Files the index has under a name the bundle carries with other bytes."""
    have: dict[str, str] = {}
    if index.is_mirror:
        page = _page(session, index.id, work.name)
        if page is not None and page.is_found:
            have = {e["filename"]: e.get("sha256") or "" for e in page.files}
    else:
        have = dict(
            session.execute(
                select(File.filename, File.sha256)
                .join(Project, Project.id == File.project_id)
                .where(Project.index_id == index.id, Project.normalized_name == work.name)
            ).all()
        )
    return [
        f"{index.path} has {f['filename']} with sha256 {have[f['filename']][:12]}..., "
        f"the bundle {f['sha256'][:12]}...: mismatched"
        for f in work.project.get("files") or []
        if have.get(f["filename"]) not in (None, f["sha256"])
    ]


def _stage_blobs(
    archive: tarfile.TarFile,
    members: dict[str, tarfile.TarInfo],
    storage: Storage,
    keys: list[str],
    summary: ImportSummary,
    progress: bool,
) -> dict[str, Path]:
    """Copy each blob the store lacks into a temp file of the store while hashing it; all of
    them or none (BundleError names the first that does not match the manifest)."""
    staged: dict[str, Path] = {}
    missing = [key for key in keys if not storage.exists(key)]
    summary.blobs_reused = len(keys) - len(missing)
    bar = Progress("bundle import", sum(members[k].size for k in missing)) if progress else None
    try:
        for key in missing:
            staged[key] = _copy_verified(archive, members[key], storage, key, bar)
            summary.blobs_stored += 1
            summary.bytes += members[key].size
    except BaseException:
        for tmp_path in staged.values():
            tmp_path.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.finish()
    return staged


def _copy_verified(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    storage: Storage,
    key: str,
    bar: Progress | None,
) -> Path:
    sink, tmp_path = storage.new_temp()
    digest = hashlib.sha256()
    try:
        with sink:
            source = archive.extractfile(member)
            if source is None:
                raise BundleError(f"blob {key} is not a file in the bundle")
            left = member.size
            while left > 0:
                chunk = source.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise BundleError(f"blob {key} is cut short: the bundle is truncated")
                digest.update(chunk)
                sink.write(chunk)
                left -= len(chunk)
                if bar is not None:
                    bar.advance(len(chunk))
            sink.flush()
            os.fsync(sink.fileno())
        if digest.hexdigest() != key:
            raise BundleError(
                f"bundle refused, nothing imported: blob {key[:12]}... does not match the sha256 "
                "its manifest lists (the bundle was changed or damaged in transit)"
            )
    except (tarfile.TarError, EOFError) as exc:
        tmp_path.unlink(missing_ok=True)
        raise BundleError(f"blob {key} cannot be read ({exc}): the bundle is damaged") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return tmp_path


def _create_indexes(session: Session, todo: list[_Work], summary: ImportSummary) -> None:
    """Create the indexes the bundle names that this server lacks: mirrors offline."""
    begin_write(session)
    for work in todo:
        if get_index_by_path(session, work.index_path) is not None:
            continue
        user, name = work.index_path.split("/")
        owner = find_user(session, user)
        assert owner is not None  # _plan refused the bundle otherwise
        config = {"type": "mirror", "offline": True} if work.kind == "mirror" else {}
        create_index(session, owner, name, config)
        session.flush()
        summary.indexes_created.append(work.index_path)
    session.commit()


def import_project(
    database: Database, storage: Storage, manifest: Manifest, work: _Work, staged: dict[str, Path]
) -> None:
    """Import one project in one transaction: its blobs into place, then its rows."""
    for key in work.blobs():
        tmp_path = staged.pop(key, None)
        if tmp_path is not None and not storage.exists(key):
            storage.commit_temp(key, tmp_path)
        elif tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
    with database.session() as session:
        begin_write(session)
        index = get_index_by_path(session, work.index_path)
        assert index is not None  # created before
        if work.kind == "mirror":
            _merge_mirror(session, storage, index, work, manifest.blobs)
        else:
            _merge_stage(session, storage, index, work)
        row = session.get(BundleImport, (index.id, work.name))
        if row is None:
            row = BundleImport(index_id=index.id, normalized_name=work.name)
            session.add(row)
        row.bundle_id, row.bundle_created_at = manifest.bundle_id, manifest.created_at
        row.imported_at, row.files = utcnow(), len(work.project.get("files") or [])
        session.commit()
    log.info("imported %s %s from bundle %s", work.index_path, work.name, manifest.bundle_id)


def _page(session: Session, index_id: int, name: str) -> MirrorPage | None:
    return session.scalar(
        select(MirrorPage).where(
            MirrorPage.index_id == index_id, MirrorPage.normalized_name == name
        )
    )


def _hold(session: Session, index_id: int, key: str, size: int) -> None:
    """The mirror holds blob `key` (verified here, as a download verifies it) and the cache
    counts it once (app/services/cache.py MirrorCache.record, in this transaction)."""
    now = utcnow()
    if session.get(MirrorBlob, key) is None:
        session.add(
            MirrorBlob(sha256=key, index_id=index_id, size=size, cached_at=now, last_access_at=now)
        )
    if session.get(MirrorHolding, (index_id, key)) is None:
        session.add(MirrorHolding(index_id=index_id, sha256=key, fetched_at=now))


def _merge_mirror(
    session: Session, storage: Storage, index: Index, work: _Work, sizes: dict[str, int]
) -> None:
    """Add the bundle's files to the mirror's page of the project; the files it listed stay."""
    name = work.name
    page = _page(session, index.id, name)
    if page is None:
        page = MirrorPage(index_id=index.id, normalized_name=name, name=work.project["name"])
        session.add(page)
    merged = {e["filename"]: e for e in (page.files if page.is_found else [])}
    for file in work.project["files"]:
        merged[file["filename"]] = {key: file.get(key) for key in PAGE_KEYS}
        _hold(session, index.id, file["sha256"], file["size"])
        metadata = file.get("metadata_blob")
        if metadata:
            _hold(session, index.id, metadata, sizes[metadata])
        session.merge(
            MirrorFile(
                index_id=index.id,
                sha256=file["sha256"],
                normalized_name=name,
                filename=file["filename"],
                size=file["size"],
                metadata_sha256=metadata,
                is_sidecar=bool(metadata and file.get("is_sidecar")),
                cached_at=utcnow(),
            )
        )
    now = utcnow()
    page.name, page.is_found, page.files = work.project["name"], True, list(merged.values())
    page.etag = page.last_modified = None
    page.checked_at = page.fetched_at = now
    session.flush()
    index_stored_page(session, storage, page)


def _merge_stage(session: Session, storage: Storage, index: Index, work: _Work) -> None:
    """Add the bundle's releases and docs to the stage; files it has stay as they are."""
    project = session.scalar(
        select(Project).where(Project.index_id == index.id, Project.normalized_name == work.name)
    )
    if project is None:
        project = Project(index_id=index.id, name=work.project["name"], normalized_name=work.name)
        session.add(project)
        session.flush()
    have = set(session.scalars(select(File.filename).where(File.project_id == project.id)))
    for file in work.project["files"]:
        if file["filename"] in have:
            continue  # the same bytes (_conflicts refused others)
        fields = {
            "filename": file["filename"],
            "version": str(file["version"]),
            "filetype": str(file["filetype"]),
            "pyversion": str(file["pyversion"]),
            "sha256": file["sha256"],
            "blake2_256": str(file["blake2_256"]),
            "md5": str(file["md5"]),
            "size": file["size"],
            "requires_python": file.get("requires_python"),
            "yanked": bool(file.get("yanked")),
            "yanked_reason": file.get("yanked_reason"),
            "metadata_sha256": file.get("metadata_blob"),
            "core_metadata": file.get("core_metadata") or {},
            "uploader": str(file.get("uploader") or ""),
            "uploaded_at": _parse_time(file.get("uploaded_at")),
        }
        add_file(session, project, fields)
    for docs in work.project.get("docs") or []:
        docset = session.scalar(
            select(DocSet).where(
                DocSet.index_id == index.id,
                DocSet.normalized_name == work.name,
                DocSet.version == str(docs["version"]),
            )
        )
        if docset is not None and docset.sha256 == docs["sha256"]:
            continue
        if docset is None:
            docset = DocSet(
                index_id=index.id, normalized_name=work.name, version=str(docs["version"])
            )
            session.add(docset)
        docset.sha256, docset.size = docs["sha256"], docs["size"]
        docset.uncompressed_bytes = int(docs["uncompressed_bytes"])
        docset.entry_count = int(docs["entry_count"])
        docset.path_prefix = str(docs.get("path_prefix") or "")
        docset.uploader = str(docs.get("uploader") or "")
        docset.uploaded_at = _parse_time(docs.get("uploaded_at"))
        session.flush()
        index_stored_docset(session, storage, docset)
    session.flush()
    index_project(session, project.id)


def _parse_time(value: Any) -> dt.datetime:
    try:
        return dt.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return utcnow()
