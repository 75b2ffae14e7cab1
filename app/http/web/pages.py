"""Data for the web pages and their JSON twins: plain functions of a session, no request."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.dists import InvalidDistribution, parse_filename
from app.data.db import get_session
from app.data.models import BundleImport, File, Index, MirrorPage, Project, User
from app.services.advisories import Found
from app.services.indexes import Reader, readable_order
from app.services.indexes_view import ProjectView
from app.services.mirror_description import (
    Metadata,
    from_core_metadata,
    held,
    latest_version,
    newest_first,
)

PAGE_SIZE = 50  # projects per page of an index


@dataclasses.dataclass(frozen=True)
class FileRow:
    """One release file as the project and version pages show it."""

    filename: str
    path: str  # below the site root, no leading slash: USER/INDEX/+f/SHA256/FILENAME
    version: str
    size: int | None
    sha256: str | None
    upload_time: dt.datetime | None
    requires_python: str | None
    is_yanked: bool
    yanked_reason: str | None
    index_path: str  # where the file lives (the index itself or one of its bases)
    metadata_sha256: str | None  # PEP 658 sidecar
    is_mirrored: bool
    is_cached: bool | None  # mirrored files: whether the bytes are in the local cache


@dataclasses.dataclass(frozen=True)
class VersionRow:
    """A version of a project with its files."""

    version: str
    files: list[FileRow]

    @property
    def is_yanked(self) -> bool:
        """Whether every file of the version is yanked (PEP 592)."""
        return all(f.is_yanked for f in self.files)

    @property
    def upload_time(self) -> dt.datetime | None:
        """When the newest file of the version was uploaded."""
        return max((f.upload_time for f in self.files if f.upload_time), default=None)


@dataclasses.dataclass(frozen=True)
class IndexRow:
    """An index on the home page."""

    index: Index
    project_count: int
    bases: list[str] | None = None  # as the visitor is shown them (None: all of them)


@dataclasses.dataclass(frozen=True)
class ProjectRow:
    """A project in an index's listing."""

    name: str
    normalized_name: str
    latest: str | None
    last_upload: dt.datetime | None  # mirrors: when the page was last fetched
    summary: str | None = None


# --- the home page and index listings --------------------------------------------------------


def all_indexes(session: Session) -> list[IndexRow]:
    """Every index with its number of projects (cached ones for mirrors), sorted by path."""
    hosted = dict(
        session.execute(select(Project.index_id, func.count()).group_by(Project.index_id)).all()
    )
    cached = dict(
        session.execute(
            select(MirrorPage.index_id, func.count())
            .where(MirrorPage.is_found.is_(True))
            .group_by(MirrorPage.index_id)
        ).all()
    )
    indexes = session.scalars(select(Index).join(Index.owner).order_by(User.username, Index.name))
    return [
        IndexRow(index, (cached if index.is_mirror else hosted).get(index.id, 0))
        for index in indexes
    ]


def stage_projects(session: Session, index: Index, page: int) -> tuple[list[ProjectRow], int]:
    """One page of a stage's own projects, with latest version and last upload; and the total."""
    total = session.scalar(
        select(func.count()).select_from(Project).where(Project.index_id == index.id)
    )
    projects = session.scalars(
        select(Project)
        .where(Project.index_id == index.id)
        .order_by(Project.normalized_name)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    files: dict[int, list[tuple[str, dt.datetime, bool]]] = {}
    if projects:
        rows = session.execute(
            select(File.project_id, File.version, File.uploaded_at, File.yanked).where(
                File.project_id.in_([p.id for p in projects])
            )
        )
        for project_id, version, uploaded_at, is_yanked in rows:
            files.setdefault(project_id, []).append((version, uploaded_at, is_yanked))
    result = []
    for project in projects:
        mine = files.get(project.id, [])
        yanked: dict[str, bool] = {}
        for version, _, is_yanked in mine:
            yanked[version] = yanked.get(version, True) and is_yanked
        result.append(
            ProjectRow(
                project.name,
                project.normalized_name,
                latest_version(yanked),
                max((f[1] for f in mine), default=None),
                project.summary,
            )
        )
    return result, total or 0


def mirror_projects(session: Session, index: Index, page: int) -> tuple[list[ProjectRow], int]:
    """One page of the projects a mirror has cached, with latest version and last fetch."""
    where = (MirrorPage.index_id == index.id, MirrorPage.is_found.is_(True))
    total = session.scalar(select(func.count()).select_from(MirrorPage).where(*where))
    pages = session.execute(
        select(MirrorPage.name, MirrorPage.normalized_name, MirrorPage.files, MirrorPage.fetched_at)
        .where(*where)
        .order_by(MirrorPage.normalized_name)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    result = []
    for name, normalized, entries, fetched_at in pages:
        yanked: dict[str, bool] = {}
        for entry in entries or ():
            try:
                version = parse_filename(entry["filename"]).version
            except (InvalidDistribution, KeyError):
                continue
            yanked[version] = yanked.get(version, True) and bool(entry.get("yanked"))
        result.append(ProjectRow(name, normalized, latest_version(yanked), fetched_at))
    return result, total or 0


def bundle_imports(session: Session, index: Index, names: list[str]) -> dict[str, BundleImport]:
    """The last bundle imported into each of these projects of the index, by normalized name."""
    return {
        row.normalized_name: row
        for row in session.scalars(
            select(BundleImport).where(
                BundleImport.index_id == index.id, BundleImport.normalized_name.in_(names)
            )
        )
    }


# --- project and version pages ---------------------------------------------------------------


def file_rows(view: ProjectView, mirror_paths: set[str]) -> list[FileRow]:
    """The view's files with their origin, and for mirrored files whether they are cached."""
    keys = {d.sha256 for d in view.dists if d.sha256 and d.index_path in mirror_paths}
    cached = held(get_session(), keys)
    rows = []
    for dist in view.dists:
        is_mirrored = dist.index_path in mirror_paths
        rows.append(
            FileRow(
                filename=dist.filename,
                path=dist.path,
                version=dist.version,
                size=dist.size,
                sha256=dist.sha256,
                upload_time=dist.upload_time,
                requires_python=dist.requires_python,
                is_yanked=dist.yanked is not False,
                yanked_reason=dist.yanked if isinstance(dist.yanked, str) else None,
                index_path=dist.index_path,
                metadata_sha256=dist.metadata_sha256,
                is_mirrored=is_mirrored,
                is_cached=((dist.index_path, dist.sha256) in cached) if is_mirrored else None,
            )
        )
    return rows


def group_versions(rows: list[FileRow]) -> list[VersionRow]:
    """Files grouped by version, newest version first, files by name."""
    by_version: dict[str, list[FileRow]] = {}
    for row in rows:
        by_version.setdefault(row.version, []).append(row)
    return [
        VersionRow(version, sorted(by_version[version], key=lambda f: f.filename))
        for version in newest_first(by_version)
    ]


def latest_of(versions: list[VersionRow]) -> str | None:
    """The version a project page leads with."""
    return latest_version({v.version: v.is_yanked for v in versions})


def hosted_metadata(
    session: Session,
    index: Index,
    normalized: str,
    version: str | None = None,
    *,
    reader: Reader | None = None,
) -> dict[str, Metadata]:
    """Metadata of each uploaded version (or just `version`) of a project on the index and
    its stage bases (with a `reader`, those it may read)."""
    stages = [i.id for i in readable_order(session, index, reader) if not i.is_mirror]
    query = (
        select(File.version, File.core_metadata)
        .join(Project)
        .where(Project.index_id.in_(stages), Project.normalized_name == normalized)
        .order_by(File.filetype)  # bdist_wheel before sdist: a wheel's metadata is exact
    )
    if version is not None:
        query = query.where(File.version == version)
    records = session.execute(query).all()
    found: dict[str, Metadata] = {}
    for version, core_metadata in records:
        if core_metadata and version not in found:
            found[version] = from_core_metadata(core_metadata)
    return found


def version_data(
    name: str,
    version: VersionRow,
    meta: Metadata | None,
    root_url: str,
    doc_url: str | None,
    affecting: Sequence[Found] = (),
) -> dict[str, Any]:
    """A version as JSON: devpi-like `versiondata` with `+links` to its files, and the
    advisories that affect it (`advisories`, when any do)."""
    data: dict[str, Any] = {"name": name, "version": version.version}
    if meta is not None:
        data.update(
            summary=meta.summary,
            requires_python=meta.requires_python,
            requires_dist=list(meta.requires_dist),
            classifiers=list(meta.classifiers),
            project_urls=dict(meta.project_urls),
            author=meta.author,
            license=meta.license,
        )
    data["+links"] = [
        {
            "rel": "releasefile",
            "href": f"{root_url}/{f.path}",
            "basename": f.filename,
            "hash_spec": f"sha256={f.sha256}" if f.sha256 else None,
            "hashes": {"sha256": f.sha256} if f.sha256 else {},
            "size": f.size,
            "upload_time": f.upload_time.strftime("%Y-%m-%dT%H:%M:%SZ") if f.upload_time else None,
            "requires_python": f.requires_python,
            "yanked": (f.yanked_reason or True) if f.is_yanked else False,
            "index": f.index_path,
            "is_cached": f.is_cached,
        }
        for f in version.files
    ]
    if doc_url:
        data["doc_url"] = doc_url
    if affecting:
        data["advisories"] = [found.as_json() for found in affecting]
    return data
