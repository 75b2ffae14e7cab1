"""Core metadata of mirrored files: read once when a mirror caches a file, kept beside it.

A plain PEP 503 upstream gives neither sizes nor PEP 658 sidecars. When a mirror caches a file
(app/services/mirror/downloads.py, which prefetch and app/ops/integrity.py's repair use too),
this module reads its METADATA or PKG-INFO with the checks an upload gets (dist_metadata.py),
stores it under its sha256 and records it in `mirror_files` with the file's size. The mirror holds
the metadata blob as it holds the file (app/services/cache_blobs.py: it made those bytes from
bytes it fetched and verified itself). A wheel's METADATA is then its PEP 658/714 sidecar, byte
for byte; an sdist's PKG-INFO only describes the project on the web pages and in search (its
dependencies are not reliable); which file's metadata describes a project:
app/services/mirror_description.py.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from app.core.dist_metadata import CoreMetadata, read_metadata
from app.core.dists import InvalidDistribution, parse_filename
from app.core.storage import Storage
from app.data.db import Database, begin_write
from app.data.models import MirrorBlob, MirrorFile, MirrorHolding, utcnow
from app.services.cache import MirrorCache
from app.services.cache_blobs import count_fetch, held_by, hold
from app.services.fulltext import index_cached_project, queue_cached_project

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedFile:
    """What a mirror knows of a file it cached: its size and its stored core metadata."""

    size: int
    metadata_sha256: str | None  # held by the mirror; None: none read, or evicted since
    is_sidecar: bool  # a wheel's METADATA: served as PEP 658 metadata


def extract(path: str | os.PathLike[str], filename: str) -> CoreMetadata | None:
    """The core metadata of the mirrored file at `path`, read and checked as an upload's
    (app/core/dist_metadata.py: size, zip-bomb and path limits, name and version); None when it
    has none valid (logged: it is the upstream's file, served all the same)."""
    try:
        return read_metadata(path, parse_filename(filename))
    except InvalidDistribution as exc:
        log.warning("no core metadata from mirrored %s: %s", filename, exc)
    except Exception:  # reading must never break the download that called it
        log.exception("could not read the core metadata of mirrored %s", filename)
    return None


def record_cached_file(
    database: Database,
    storage: Storage,
    cache: MirrorCache,
    index_id: int,
    key: str,
    filename: str,
    size: int,
    metadata: CoreMetadata | None,
    *,
    is_fetch: bool = False,
    queue_index: bool = False,
) -> bool:
    """Record that mirror `index_id` cached and holds `filename` (sha256 `key`, `size` bytes)
    with its `metadata` (from extract), storing that as a blob this mirror holds too, and
    reindex the project for search (its description may come from this file now); with
    `is_fetch`, count the miss and its bytes in the mirror's stats. One transaction for all of
    it: False (logged) when it could not be written, and the file is served all the same.

    `queue_index`: the reindex is queued in that transaction (app/services/fulltext.py's
    `search_jobs`) for the caller to drain, instead of done here in a transaction of its own."""
    try:
        info = parse_filename(filename)
    except InvalidDistribution:  # never cached: the mirror serves only files it can name
        return False
    metadata_sha256 = None
    if metadata is not None:
        metadata_sha256 = _store_metadata(storage, metadata.raw)
    try:
        with database.session() as session:
            begin_write(session)
            hold(session, index_id, key, size)
            if metadata is not None and metadata_sha256 is not None:
                hold(session, index_id, metadata_sha256, len(metadata.raw))
            session.merge(
                MirrorFile(
                    index_id=index_id,
                    sha256=key,
                    normalized_name=info.normalized_name,
                    filename=filename,
                    size=size,
                    metadata_sha256=metadata_sha256,
                    is_sidecar=metadata_sha256 is not None and info.filetype == "bdist_wheel",
                    cached_at=utcnow(),
                )
            )
            if is_fetch:
                count_fetch(session, index_id, size)
            if queue_index:
                queue_cached_project(session, index_id, info.normalized_name)
            session.commit()
    except Exception:  # accounting must never break a download: it is fetched again
        log.exception("could not record mirrored %s", filename)
        return False
    if queue_index:
        return True
    try:
        index_cached_project(database, storage, index_id, info.normalized_name)
    except Exception:  # search finds the project by name until `reindex` or its next change
        log.exception("could not index the description of mirrored %s", filename)
    return True


def _store_metadata(storage: Storage, raw: bytes) -> str | None:
    """Store metadata bytes (unless stored already); their sha256, or None when the store
    refused them."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        if not storage.exists(digest):  # an upload's identical bytes stay as they are
            storage.save(digest, io.BytesIO(raw))
    except OSError as exc:  # a full disk: the file itself is cached, its metadata is not
        log.error("could not store core metadata %s: %s", digest, exc)
        return None
    return digest


def cached_files(
    session: Session, index_id: int, normalized_name: str, keys: Iterable[str] = ()
) -> dict[str, CachedFile]:
    """The files of a project that mirror `index_id` cached, by sha256; metadata counts only
    while the mirror holds its blob. Those of `keys` that it holds without a record (cached
    before it read metadata) come with their size alone."""
    rows = session.execute(
        select(
            MirrorFile.sha256,
            MirrorFile.size,
            MirrorFile.metadata_sha256,
            MirrorFile.is_sidecar,
            MirrorHolding.sha256,
        )
        .outerjoin(
            MirrorHolding,
            and_(
                MirrorHolding.index_id == MirrorFile.index_id,
                MirrorHolding.sha256 == MirrorFile.metadata_sha256,
            ),
        )
        .where(MirrorFile.index_id == index_id, MirrorFile.normalized_name == normalized_name)
    )
    found = {
        key: CachedFile(size, metadata if held else None, bool(is_sidecar) and bool(held))
        for key, size, metadata, is_sidecar, held in rows
    }
    held = sorted(held_by(session, index_id, (key for key in keys if key not in found)))
    for start in range(0, len(held), 500):  # bounded IN lists
        for key, size in session.execute(
            select(MirrorBlob.sha256, MirrorBlob.size).where(
                MirrorBlob.sha256.in_(held[start : start + 500])
            )
        ):
            found[key] = CachedFile(size, None, False)
    return found


def sidecar_of(session: Session, index_id: int, key: str, filename: str) -> str | None:
    """The sha256 of the PEP 658 sidecar extracted from wheel `key` (`filename`) that mirror
    `index_id` cached and holds, or None."""
    return session.scalar(
        select(MirrorFile.metadata_sha256)
        .join(
            MirrorHolding,
            and_(
                MirrorHolding.index_id == MirrorFile.index_id,
                MirrorHolding.sha256 == MirrorFile.metadata_sha256,
            ),
        )
        .where(
            MirrorFile.index_id == index_id,
            MirrorFile.sha256 == key,
            MirrorFile.filename == filename,
            MirrorFile.is_sidecar.is_(True),
        )
    )
