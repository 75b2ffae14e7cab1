"""Filling the mirror cache with what a requirements file needs, so a site can go offline.

app/ops/resolve.py decides which versions and files each target environment needs; this module
reads the index's pages and metadata for it and fetches the files. Both go through the app
itself (in-process, Flask's test client), so they take exactly the path a pip request takes:
single-flight with the server's workers, hash check against the upstream's sha256, accounting,
cache cap, and the METADATA the mirror reads from a wheel it caches (served as its sidecar).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from app import create_app
from app.core.config import Settings
from app.core.dists import parse_filename
from app.core.progress import Progress
from app.core.upstream import MIME_JSON
from app.ops.requirements import Requirements
from app.ops.resolve import Miss, Plan, PlannedFile, SourceError, plan
from app.ops.targets import Target
from app.services.cache import holds, human_bytes
from app.services.fulltext import drain_queue
from app.services.indexes import get_index_by_path
from app.services.mirror_metadata import cached_files

log = logging.getLogger(__name__)

INDEX_OF_FILE_RE = re.compile(r"/([^/]+/[^/]+)/\+f/")  # the index in a `+f` path


@dataclass
class PrefetchSummary:
    """What a prefetch did: the plan, what it downloaded, and what it could not."""

    plan: Plan
    files: int = 0  # distribution files downloaded now
    bytes: int = 0
    already_cached: int = 0
    sidecars: int = 0  # PEP 658 metadata files fetched or found cached
    misses: list[Miss] = field(default_factory=list)


class MirrorSource:
    """An index's pages and core metadata read through an app, as pip would read them."""

    def __init__(self, app: Flask, index_path: str) -> None:
        self.app = app
        self.client = app.test_client()
        self.index_path = index_path.strip("/")
        self.storage = app.extensions["pyshelf.storage"]
        self.fetched: dict[str, int] = {}  # url -> bytes: files downloaded to read metadata

    def files(self, project: str) -> list[dict[str, Any]]:
        """The PEP 691 file entries of `project` on the index."""
        response = self.client.get(
            f"/{self.index_path}/+simple/{project}/", headers={"Accept": MIME_JSON}
        )
        if response.status_code != 200:
            raise SourceError(f"{self.index_path} answers {response.status}")
        files: list[dict[str, Any]] = response.get_json()["files"]
        return files

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
            return self._get(url + ".metadata")
        return self._pkg_info(entry, key)

    def download(self, url: str, bar: Progress | None = None, *, grow: bool = False) -> int:
        """GET a file to its end through the mirror (which hashes and caches it); its size.
        `grow`: the plan did not know the size, so the bar's total grows by it."""
        if url in self.fetched:
            return self.fetched[url]
        response = self.client.get(url)
        size = 0
        try:
            if response.status_code != 200:
                raise SourceError(f"{self.index_path} answers {response.status}")
            length = response.headers.get("Content-Length", "")
            if bar is not None and grow and length.isdigit():
                bar.grow(int(length))
            for chunk in response.response:  # streams through the mirror into the cache
                size += len(chunk)
                if bar is not None:
                    bar.advance(len(chunk))
        except SourceError:
            raise
        except Exception as exc:  # the mirror's hash check or the upstream failed mid-file
            raise SourceError(f"download failed: {exc}") from None
        finally:
            response.close()
        self.fetched[url] = size
        return size

    def _get(self, url: str) -> bytes:
        response = self.client.get(url)
        try:
            if response.status_code != 200:
                raise SourceError(f"{url.rsplit('/', 1)[-1]}: {response.status}")
            return response.get_data()
        finally:
            response.close()

    def _pkg_info(self, entry: dict[str, Any], key: str) -> bytes:
        """The PKG-INFO the mirror read from sdist `key` when it cached it."""
        index_path = self._index_of(entry["url"])
        with self.app.extensions["pyshelf.db"].session() as session:
            index = get_index_by_path(session, index_path)
            cached = cached_files(session, index.id, _project_of(entry), [key]) if index else {}
        found = cached.get(key)
        if found is None or found.metadata_sha256 is None:
            raise SourceError("no PKG-INFO could be read from it")
        with self.storage.open(found.metadata_sha256) as stream:
            data: bytes = stream.read()
        return data

    def _index_of(self, url: str) -> str:
        match = INDEX_OF_FILE_RE.search(url)
        return match.group(1) if match else self.index_path

    def is_cached(self, url: str, key: str) -> bool:
        """Whether the index the `+f` url names serves `key` from its store: an upload, or a
        file that mirror fetched itself (the same bytes cached for another index do not count:
        the mirror would download them on first use)."""
        if not key or not self.storage.exists(key):
            return False
        with self.app.extensions["pyshelf.db"].session() as session:
            index = get_index_by_path(session, self._index_of(url))
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
    through an app of these settings."""
    source = open_source(settings, index_path)
    summary = fetch(source, plan(requirements, targets, source), progress=progress)
    drain_queue(settings)  # the pages it stored, queued for search by the mirror
    return summary


def open_source(settings: Settings, index_path: str) -> MirrorSource:
    """Index `index_path` of an app of these settings, for plan() and fetch()."""
    app = create_app(dataclasses.replace(settings, access_log=False))  # no access log lines
    return MirrorSource(app, index_path)
