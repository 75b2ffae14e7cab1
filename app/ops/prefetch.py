"""Filling the mirror cache with what a requirements file needs, so a site can go offline.

app/ops/resolve.py decides which versions and files each target environment needs; this module
reads the index's pages and metadata for it and fetches the files. Both go through the mirror
service (app/services/mirror/) as a pip request does: the page installers get (guard rules,
advisories and quarantine applied; the operator reads every index), single flight with the
server's workers, the hash check against the upstream's sha256, accounting, cache cap, and the
METADATA the mirror reads from a wheel it caches (served as its sidecar).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.dists import normalize_name, parse_filename
from app.core.progress import Progress
from app.core.storage_choice import make_storage
from app.core.upstream import UpstreamError
from app.core.upstream_client import UpstreamClient
from app.data.db import Database
from app.data.models import File, Index, Project
from app.ops.requirements import Requirements
from app.ops.resolve import Miss, Plan, PlannedFile, SourceError, plan
from app.ops.targets import Target
from app.services.cache import human_bytes
from app.services.cache_blobs import holds
from app.services.fulltext import drain_queue
from app.services.indexes import get_index_by_path, resolution_order
from app.services.indexes_view import Dist, project_view
from app.services.mirror import Blob, Data, Head, Mirror, MirrorError
from app.services.mirror_metadata import cached_files

log = logging.getLogger(__name__)

FILE_URL_RE = re.compile(r"^/([^/]+/[^/]+)/\+f/([0-9a-f]{64})/([^/]+)$")  # a `+f` path


@dataclass
class PrefetchSummary:
    """What a prefetch did: the plan, what it downloaded, and what it could not."""

    plan: Plan
    files: int = 0  # distribution files downloaded now
    bytes: int = 0
    already_cached: int = 0
    sidecars: int = 0  # PEP 658 metadata files fetched or found cached
    misses: list[Miss] = field(default_factory=list)


def _entry(dist: Dist) -> dict[str, Any]:
    """A page's file as the PEP 691 JSON page lists it (the keys resolve.py reads)."""
    entry: dict[str, Any] = {
        "filename": dist.filename,
        "url": f"/{dist.path}",
        "hashes": {"sha256": dist.sha256} if dist.sha256 else {},
        "requires-python": dist.requires_python,
        "yanked": dist.yanked,
        "core-metadata": {"sha256": dist.metadata_sha256} if dist.metadata_sha256 else False,
    }
    if dist.size is not None:
        entry["size"] = dist.size
    return entry


class MirrorSource:
    """An index's pages and core metadata read through the mirror service, as pip reads them."""

    def __init__(self, mirror: Mirror, index_path: str) -> None:
        self.mirror = mirror
        self.database: Database = mirror.database
        self.storage = mirror.storage
        self.index_path = index_path.strip("/")
        self.fetched: dict[str, int] = {}  # url -> bytes: files downloaded to read metadata

    def files(self, project: str) -> list[dict[str, Any]]:
        """The PEP 691 file entries of `project` on the index, as an installer gets them."""
        name = normalize_name(project)
        with self.database.session() as session:
            index = get_index_by_path(session, self.index_path)
            if index is None:
                raise SourceError(f"there is no index {self.index_path} (404)")
            order = resolution_order(session, index)
            try:
                view = project_view(
                    session, index, name, self.mirror, order=order, for_installers=True
                )
            except UpstreamError as exc:
                raise SourceError(f"the upstream failed and {name} is not cached: {exc}") from None
            if view is None:
                raise SourceError(f"project {name} is not on index {self.index_path} (404)")
        return [_entry(dist) for dist in view.dists]

    def metadata(self, entry: dict[str, Any]) -> bytes:
        """Core metadata of a file: its sidecar, else read from the file once cached."""
        url = entry["url"]
        listed = entry.get("core-metadata") or entry.get("data-dist-info-metadata")
        key = str((entry.get("hashes") or {}).get("sha256") or "")
        if not listed and not self.is_cached(url, key):
            # A plain upstream offers no sidecar: caching the file (needed anyway) makes the
            # mirror read its METADATA or PKG-INFO (app/services/mirror_metadata.py).
            self.download(url)
        if entry["filename"].endswith(".whl"):
            return self._sidecar(url)
        return self._pkg_info(entry, key)

    def download(self, url: str, bar: Progress | None = None, *, grow: bool = False) -> int:
        """Fetch a file (or `.metadata` sidecar) to its end through the mirror (which hashes and
        caches it); its size. `grow`: the plan did not know the size, so the bar grows by it."""
        if url in self.fetched:
            return self.fetched[url]
        with self.database.session() as session:
            index, key, filename = self._file_of(session, url)
            if not index.is_mirror:  # an upload: stored already
                size = self.storage.size(self._hosted_key(session, index, key, filename))
                self.fetched[url] = size
                return size
            served = self._serve(session, index, key, filename)
        size = 0
        if isinstance(served, Blob):
            size = self.storage.size(served.key)
        elif isinstance(served, Data):
            size = len(served.data)
        elif not isinstance(served, Head):
            try:
                if bar is not None and grow and served.size is not None:
                    bar.grow(served.size)
                for chunk in served.chunks:  # streams through the mirror into the cache
                    size += len(chunk)
                    if bar is not None:
                        bar.advance(len(chunk))
            except Exception as exc:  # the mirror's hash check or the upstream failed mid-file
                raise SourceError(f"download failed: {exc}") from None
            finally:
                served.close()
        self.fetched[url] = size
        return size

    def _file_of(self, session: Session, url: str) -> tuple[Index, str, str]:
        """The index, key and filename a `+f` URL names (SourceError when there is none)."""
        match = FILE_URL_RE.match(url)
        index = get_index_by_path(session, match.group(1)) if match else None
        if match is None or index is None:
            raise SourceError(f"{url.rsplit('/', 1)[-1]}: no such file (404)")
        return index, match.group(2), match.group(3)

    def _serve(self, session: Session, index: Index, key: str, filename: str) -> Any:
        """What the mirror serves for a file or its `.metadata` (SourceError with its reason)."""
        is_metadata = filename.endswith(".metadata")
        try:
            return self.mirror.serve_file(
                session, index, key, filename.removesuffix(".metadata"), is_metadata=is_metadata
            )
        except MirrorError as exc:
            raise SourceError(str(exc)) from None

    def _hosted_key(self, session: Session, index: Index, key: str, filename: str) -> str:
        """The blob of an uploaded file or (`.metadata`) of its sidecar."""
        dist_filename = filename.removesuffix(".metadata")
        record = session.scalar(
            select(File)
            .join(Project)
            .where(Project.index_id == index.id, File.sha256 == key, File.filename == dist_filename)
        )
        found = record.metadata_sha256 if record and filename.endswith(".metadata") else key
        if record is None or found is None:
            raise SourceError(f"{filename}: no such file on {index.path} (404)")
        return found

    def _sidecar(self, url: str) -> bytes:
        """The bytes of a wheel's `.metadata` sidecar, fetched through the mirror if need be."""
        with self.database.session() as session:
            index, key, filename = self._file_of(session, url + ".metadata")
            if not index.is_mirror:
                blob = self._hosted_key(session, index, key, filename)
            else:
                served = self._serve(session, index, key, filename)
                if isinstance(served, Data):
                    return served.data
                if not isinstance(served, Blob):  # a sidecar is never streamed
                    raise SourceError(f"{filename}: not served whole")
                blob = served.key
        with self.storage.open(blob) as stream:
            data: bytes = stream.read()
        return data

    def _pkg_info(self, entry: dict[str, Any], key: str) -> bytes:
        """The PKG-INFO the mirror read from sdist `key` when it cached it."""
        with self.database.session() as session:
            index, _key, _filename = self._file_of(session, entry["url"])
            cached = cached_files(session, index.id, _project_of(entry), [key])
        found = cached.get(key)
        if found is None or found.metadata_sha256 is None:
            raise SourceError("no PKG-INFO could be read from it")
        with self.storage.open(found.metadata_sha256) as stream:
            data: bytes = stream.read()
        return data

    def is_cached(self, url: str, key: str) -> bool:
        """Whether the index the `+f` url names serves `key` from its store: an upload, or a
        file that mirror fetched itself (the same bytes cached for another index do not count:
        the mirror would download them on first use)."""
        if not key or not self.storage.exists(key):
            return False
        with self.database.session() as session:
            match = FILE_URL_RE.match(url)
            index = get_index_by_path(session, match.group(1)) if match else None
            if index is None:
                return False
            return not index.is_mirror or holds(session, index.id, key)


def _project_of(entry: dict[str, Any]) -> str:
    return parse_filename(entry["filename"]).normalized_name


def fetch(source: MirrorSource, planned: Plan, *, progress: bool = True) -> PrefetchSummary:
    """Download every file of `planned` (and its sidecar) that the mirror does not hold yet."""
    summary = PrefetchSummary(planned, misses=list(planned.misses))
    total = sum(f.size or 0 for f in planned.files)
    bar = Progress("prefetch", total, files=len(planned.files)) if progress else None
    for file in planned.files:
        if not file.sha256:
            summary.misses.append(Miss(file.project, f"{file.filename}: {_NO_SHA256}"))
            _skip(bar, file)
            continue
        if file.url in source.fetched:  # downloaded while planning, to read its metadata
            summary.files += 1
            summary.bytes += source.fetched[file.url]
            _skip(bar, file)
        elif source.is_cached(file.url, file.sha256):
            summary.already_cached += 1
            _skip(bar, file)
        else:
            try:
                summary.bytes += source.download(file.url, bar, grow=file.size is None)
                summary.files += 1
            except SourceError as exc:
                summary.misses.append(Miss(file.project, f"{file.filename}: {exc}"))
            if bar is not None:
                bar.advance(0, files=1)
        if file.metadata_sha256:
            _fetch_sidecar(source, file, summary)
    if bar is not None:
        bar.finish()
    return summary


_NO_SHA256 = "the index lists no sha256 for it, so the mirror streams it uncached"


def _skip(bar: Progress | None, file: PlannedFile) -> None:
    if bar is not None:
        bar.advance(file.size or 0, files=1)


def _fetch_sidecar(source: MirrorSource, file: PlannedFile, summary: PrefetchSummary) -> None:
    """Fetch the PEP 658 sidecar pip asks for before the file (a miss when it fails)."""
    url = file.url + ".metadata"
    if file.metadata_sha256 and not source.is_cached(url, file.metadata_sha256):
        try:
            source.download(url)
        except SourceError as exc:
            summary.misses.append(Miss(file.project, f"{file.filename}.metadata: {exc}"))
            return
    summary.sidecars += 1


def format_summary(summary: PrefetchSummary) -> str:
    """Lines for people: per target the versions chosen, then totals and every miss."""
    planned = summary.plan
    lines = []
    for target, chosen in planned.chosen.items():
        versions = ", ".join(f"{name} {version}" for name, version in sorted(chosen.items()))
        lines.append(f"  {target}: {versions or 'nothing'}")
    downloaded = f"{summary.files} downloaded ({human_bytes(summary.bytes)})"
    lines.insert(
        0,
        f"prefetch: {len(planned.projects)} projects, {len(planned.files)} files for "
        f"{len(planned.targets)} targets: {downloaded}, {summary.already_cached} already "
        f"cached, {summary.sidecars} metadata sidecars",
    )
    for miss in summary.misses:
        lines.append(f"  missing: {miss.project}: {miss.reason}")
    return "\n".join(lines)


def prefetch(
    settings: Settings,
    requirements: Requirements,
    targets: Sequence[Target],
    index_path: str,
    *,
    progress: bool = True,
) -> PrefetchSummary:
    """Resolve `requirements` for `targets` on `index_path` and fetch every file they need
    through the mirror service, as the server's workers would."""
    database = Database(settings.database_url)
    mirror = Mirror(
        settings, database, make_storage(settings), UpstreamClient.from_settings(settings)
    )
    try:
        source = MirrorSource(mirror, index_path)
        summary = fetch(source, plan(requirements, targets, source), progress=progress)
    finally:
        mirror.counters.flush()
        database.engine.dispose()
    drain_queue(settings)  # the pages it stored, queued for search by the mirror
    return summary
