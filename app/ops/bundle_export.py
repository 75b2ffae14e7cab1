"""`bundle export`: write what a site needs offline (mirror files, stage releases) into one bundle.

The connected pyshelf writes, for the mirror files asked for, their project pages as the mirror
holds them (only the files carried, with the upstream's sha256, PEP 700 upload time and the
size of the verified bytes), the files, their core metadata (the PEP 658 sidecar of a wheel), and
for `--index USER/NAME` that stage's own releases with their docs. Every blob is streamed from
the store into the archive while it is hashed, and a blob whose bytes no longer match its sha256
stops the export: a bundle never carries damage. The format: app/ops/bundle_format.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.progress import Progress
from app.core.storage import Storage
from app.core.storage_choice import make_storage
from app.core.storage_local import fsync_dir
from app.data.db import Database
from app.data.models import DocSet, File, Index, MirrorPage, Project, utcnow
from app.ops.bundle_format import (
    CHUNK_BYTES,
    MANIFEST,
    BundleError,
    Manifest,
    blob_member,
    format_time,
)
from app.services.cache import MirrorCache
from app.services.cache_blobs import BlobLock, holds
from app.services.indexes import get_index_by_path
from app.services.mirror_metadata import cached_files, extract, record_cached_file
from app.services.releases import FILE_FIELDS

log = logging.getLogger("pyshelf")

ARCHIVE_MODE = 0o644  # packages and public metadata: no secret in a bundle
WORK_SUFFIX = ".part"


@dataclass
class ExportSummary:
    """What an export wrote."""

    path: Path
    bundle_id: str
    projects: int = 0
    files: int = 0
    blobs: int = 0
    bytes: int = 0
    seconds: float = 0.0


def files_for(session: Session, index: Index) -> list[tuple[str, str]]:
    """(normalized project, filename) of every file mirror `index` holds (`--all-cached`); a
    requirements file's files come from the resolver instead (app/ops/resolve.py plan())."""
    pages = session.scalars(
        select(MirrorPage).where(MirrorPage.index_id == index.id, MirrorPage.is_found.is_(True))
    )
    chosen: list[tuple[str, str]] = []
    for page in sorted(pages, key=lambda page: page.normalized_name):
        name = page.normalized_name
        chosen += [(name, e["filename"]) for e in page.files if _is_held(session, index, e)]
    return chosen


def _is_held(session: Session, index: Index, entry: dict[str, Any]) -> bool:
    """Whether the mirror verified and holds this page entry's file (only those are carried)."""
    return bool(entry.get("sha256")) and holds(session, index.id, entry["sha256"])


def export_bundle(
    settings: Settings,
    target: Path,
    *,
    mirror_path: str | None = None,
    files: list[tuple[str, str]] | None = None,
    stage_paths: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Write a bundle of mirror `mirror_path`'s `files` and the releases of `stage_paths`."""
    started = time.monotonic()
    target = Path(target)
    if target.exists() and not force:
        raise BundleError(f"{target} exists: choose another name, or --force to replace it")
    database = Database(settings.database_url)
    storage = make_storage(settings)
    try:
        if files and mirror_path:
            _complete_metadata(settings, database, storage, mirror_path, files)
        with BlobLock(settings).shared(), database.session() as session:
            # Held from the plan to the last blob: eviction removes no blob meanwhile.
            manifest = Manifest(uuid.uuid4().hex, utcnow(), {}, [], [])
            if files and mirror_path:
                manifest.mirrors.append(
                    _mirror_part(session, storage, mirror_path, files, manifest)
                )
            for path in stage_paths or []:
                manifest.stages.append(_stage_part(session, storage, path, manifest))
            summary = ExportSummary(path=target, bundle_id=manifest.bundle_id)
            _write(target, storage, manifest, summary, progress)
    finally:
        database.engine.dispose()
    summary.projects = sum(len(part["projects"]) for part in (*manifest.mirrors, *manifest.stages))
    summary.seconds = time.monotonic() - started
    return summary


def _mirror_index(session: Session, path: str) -> Index:
    index = get_index_by_path(session, path)
    if index is None or not index.is_mirror:
        raise BundleError(f"{path} is not a mirror index here")
    return index


def _complete_metadata(
    settings: Settings,
    database: Database,
    storage: Storage,
    mirror_path: str,
    files: list[tuple[str, str]],
) -> None:
    """Read the core metadata of carried files cached before the mirror read it (as it does
    when it caches one now), so that the offline side serves every wheel's PEP 658 sidecar."""
    with database.session() as session:
        index = _mirror_index(session, mirror_path)
        index_id, wanted = index.id, set(files)
        todo: list[tuple[str, str, int]] = []
        for page in _pages(session, index, {name for name, _ in files}):
            keys = [e["sha256"] for e in page.files if e.get("sha256")]
            known = cached_files(session, index_id, page.normalized_name, keys)
            for entry in page.files:
                key = entry.get("sha256")
                held = known.get(key) if key else None
                is_wanted = (page.normalized_name, entry["filename"]) in wanted
                if is_wanted and key and held and held.metadata_sha256 is None:
                    todo.append((key, entry["filename"], held.size))
    if not todo:
        return
    cache = MirrorCache(settings, database, storage)
    for key, filename, size in todo:
        with tempfile.TemporaryDirectory(dir=settings.tmp_dir) as work:
            copy = Path(work) / filename
            with storage.open(key) as source, open(copy, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK_BYTES)
            metadata = extract(copy, filename)
        if metadata is not None:
            record_cached_file(database, storage, cache, index_id, key, filename, size, metadata)


def _pages(session: Session, index: Index, names: set[str]) -> list[MirrorPage]:
    return list(
        session.scalars(
            select(MirrorPage)
            .where(MirrorPage.index_id == index.id, MirrorPage.normalized_name.in_(names))
            .order_by(MirrorPage.normalized_name)
        )
    )


def _add_blob(manifest: Manifest, storage: Storage, key: str) -> int:
    """List blob `key` (once) with its stored size; BundleError when the store lacks it."""
    if key not in manifest.blobs:
        try:
            manifest.blobs[key] = storage.size(key)
        except FileNotFoundError:
            raise BundleError(f"blob {key} is not stored: run `pyshelf verify`") from None
    return manifest.blobs[key]


def _mirror_part(
    session: Session,
    storage: Storage,
    mirror_path: str,
    files: list[tuple[str, str]],
    manifest: Manifest,
) -> dict[str, Any]:
    """The mirror's pages of `files`' projects, listing only the carried files, verified sizes
    and the sidecars it holds (a page must not offer what the offline side cannot serve)."""
    index = _mirror_index(session, mirror_path)
    wanted = set(files)
    projects = []
    for page in _pages(session, index, {name for name, _ in files}):
        keys = [e["sha256"] for e in page.files if e.get("sha256")]
        known = cached_files(session, index.id, page.normalized_name, keys)
        carried = []
        for entry in page.files:
            key = entry.get("sha256")
            if (page.normalized_name, entry["filename"]) not in wanted or not key:
                continue
            if not holds(session, index.id, key):
                continue
            held = known.get(key)
            metadata = held.metadata_sha256 if held else None
            carried.append(
                {
                    **entry,
                    "url": entry["filename"],  # the upstream's URL stays behind (its host, a token)
                    "size": _add_blob(manifest, storage, key),
                    "metadata_blob": metadata,
                    "is_sidecar": bool(held and held.is_sidecar),
                    # PEP 658: only a sidecar the offline side holds is advertised.
                    "metadata_sha256": metadata if held and held.is_sidecar else None,
                }
            )
            if metadata is not None:
                _add_blob(manifest, storage, metadata)
        if carried:
            projects.append({"name": page.name, "files": carried})
    return {"index": index.path, "projects": projects}


def _stage_part(
    session: Session, storage: Storage, path: str, manifest: Manifest
) -> dict[str, Any]:
    """Every release of stage `path`: its file rows, sidecars and doc sets."""
    index = get_index_by_path(session, path)
    if index is None or index.is_mirror:
        raise BundleError(f"{path} is not a stage index here")
    projects = []
    for project in session.scalars(
        select(Project).where(Project.index_id == index.id).order_by(Project.normalized_name)
    ):
        files = []
        for row in session.scalars(select(File).where(File.project_id == project.id)):
            files.append(
                {
                    **{key: getattr(row, key) for key in STAGE_FILE_KEYS},
                    "uploaded_at": format_time(row.uploaded_at),
                    "metadata_blob": row.metadata_sha256,
                    "size": _add_blob(manifest, storage, row.sha256),
                }
            )
            if row.metadata_sha256:
                _add_blob(manifest, storage, row.metadata_sha256)
        docs = []
        for docset in session.scalars(
            select(DocSet).where(
                DocSet.index_id == index.id, DocSet.normalized_name == project.normalized_name
            )
        ):
            docs.append(
                {
                    **{key: getattr(docset, key) for key in STAGE_DOCS_KEYS},
                    "uploaded_at": format_time(docset.uploaded_at),
                    "size": _add_blob(manifest, storage, docset.sha256),
                }
            )
        projects.append({"name": project.name, "files": files, "docs": docs})
    return {"index": index.path, "projects": projects}


# A file row's fields as they are; its size, sidecar and upload time are written apart.
STAGE_FILE_KEYS = tuple(
    key for key in FILE_FIELDS if key not in ("size", "metadata_sha256", "uploaded_at")
)
STAGE_DOCS_KEYS = (
    "version",
    "sha256",
    "uncompressed_bytes",
    "entry_count",
    "path_prefix",
    "uploader",
)


class _HashingReader:
    """Hands a blob to tarfile chunk by chunk while hashing it and advancing a progress bar."""

    def __init__(self, source: IO[bytes], bar: Progress | None) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.bar = bar

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(min(size, CHUNK_BYTES) if size >= 0 else CHUNK_BYTES)
        self.digest.update(chunk)
        if self.bar is not None:
            self.bar.advance(len(chunk))
        return chunk


def _member(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(mtime)
    return info


def _write(
    target: Path, storage: Storage, manifest: Manifest, summary: ExportSummary, progress: bool
) -> None:
    """Stream every blob into a part file beside `target`, checking each against its sha256,
    then the manifest; rename it into place only when all of it is written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + WORK_SUFFIX)
    bar = Progress("bundle export", sum(manifest.blobs.values())) if progress else None
    now = dt.datetime.now(dt.UTC).timestamp()
    try:
        with (
            open(part, "wb") as sink,
            tarfile.open(fileobj=sink, mode="w:", format=tarfile.PAX_FORMAT) as archive,
        ):
            # tarfile reads 16 KiB at a time by default; typeshed lacks the attribute
            archive.copybufsize = CHUNK_BYTES  # type: ignore[attr-defined]
            for key, size in manifest.blobs.items():
                with storage.open(key) as source:
                    reader = _HashingReader(source, bar)
                    archive.addfile(_member(blob_member(key), size, now), reader)
                if reader.digest.hexdigest() != key:
                    raise BundleError(
                        f"stored blob {key} does not match its sha256: run pyshelf verify --repair"
                    )
                summary.blobs += 1
                summary.bytes += size
            raw = manifest.to_json()
            archive.addfile(_member(MANIFEST, len(raw), now), io.BytesIO(raw))
            archive.close()
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(part, ARCHIVE_MODE)
        os.replace(part, target)
        fsync_dir(target.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.finish()
    summary.files = sum(
        len(project["files"])
        for part_ in (*manifest.mirrors, *manifest.stages)
        for project in part_["projects"]
    )
