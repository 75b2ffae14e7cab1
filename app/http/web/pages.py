"""Data for the web pages and their JSON twins: plain functions of a session, no request."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.parser
import email.policy
from collections.abc import Iterable
from typing import Any

from packaging.version import Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.dists import InvalidDistribution, parse_filename
from app.data.db import get_session
from app.data.models import File, Index, MirrorHolding, MirrorPage, Project, User
from app.services.indexes import ProjectView, Reader, readable_order
from app.services.mirror_metadata import metadata_of

PAGE_SIZE = 50  # projects per page of an index
MAX_METADATA_BYTES = 4 << 20  # 4 MiB: a cached upstream METADATA file read for a page


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
class Metadata:
    """The core metadata fields the pages show (PEP 566 names, lowercased)."""

    summary: str | None = None
    description: str | None = None
    description_content_type: str | None = None
    requires_python: str | None = None
    requires_dist: list[str] = dataclasses.field(default_factory=list)
    classifiers: list[str] = dataclasses.field(default_factory=list)
    project_urls: dict[str, str] = dataclasses.field(default_factory=dict)
    author: str | None = None
    author_email: str | None = None
    license: str | None = None
    keywords: str | None = None


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


def version_key(version: str) -> tuple[int, Any]:
    """Sort key: valid versions by PEP 440, invalid ones below them by text."""
    try:
        return (1, Version(version))
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        return (0, version)


def newest_first(versions: Iterable[str]) -> list[str]:
    """Versions from the highest down."""
    return sorted(set(versions), key=version_key, reverse=True)


def latest_version(versions: dict[str, bool]) -> str | None:
    """The version to show first, as PyPI does: the highest final, not yanked, release.

    `versions` maps each version to whether it is yanked; pre-releases and yanked versions
    count only when nothing else exists.
    """
    ordered = newest_first(versions)
    candidates = [v for v in ordered if not versions[v]] or ordered
    for version in candidates:
        key = version_key(version)
        if key[0] and not (key[1].is_prerelease or key[1].is_devrelease):
            return version
    return candidates[0] if candidates else None


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


# --- project and version pages ---------------------------------------------------------------


def file_rows(view: ProjectView, mirror_paths: set[str]) -> list[FileRow]:
    """The view's files with their origin, and for mirrored files whether they are cached."""
    keys = {d.sha256 for d in view.dists if d.sha256 and d.index_path in mirror_paths}
    cached = _held(keys)
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


def _held(keys: Iterable[str | None]) -> set[tuple[str, str | None]]:
    """(mirror path, key) of the keys a mirror holds (fetched itself; one query): the blob store
    is shared, and another index's blob under the same key is not this mirror's to show."""
    wanted = [key for key in keys if key]
    if not wanted:
        return set()
    rows = get_session().execute(
        select(User.username, Index.name, MirrorHolding.sha256)
        .join(Index, Index.id == MirrorHolding.index_id)
        .join(User, User.id == Index.owner_id)
        .where(MirrorHolding.sha256.in_(wanted))
    )
    return {(f"{user}/{name}", key) for user, name, key in rows}


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


def _from_core_metadata(data: dict[str, Any]) -> Metadata:
    fields = {f.name for f in dataclasses.fields(Metadata)}
    return Metadata(**{k: v for k, v in data.items() if k in fields and v is not None})


def _from_raw_metadata(raw: bytes) -> Metadata:
    """Parse a METADATA file (an upstream PEP 658 sidecar) for display; never raises."""
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)

    def one(key: str) -> str | None:
        value = message.get(key)
        return str(value).strip() if value is not None and str(value).strip() else None

    urls = {}
    for item in message.get_all("Project-URL") or ():
        label, _, url = str(item).partition(",")
        if url.strip():
            urls[label.strip()] = url.strip()
    if one("Home-page"):
        urls.setdefault("Homepage", one("Home-page") or "")
    payload = message.get_payload()
    description = payload if isinstance(payload, str) and payload.strip() else one("Description")
    return Metadata(
        summary=one("Summary"),
        description=description,
        description_content_type=one("Description-Content-Type"),
        requires_python=one("Requires-Python"),
        requires_dist=[str(v) for v in message.get_all("Requires-Dist") or ()],
        classifiers=[str(v) for v in message.get_all("Classifier") or ()],
        project_urls=urls,
        author=one("Author"),
        author_email=one("Author-email"),
        license=one("License"),
        keywords=one("Keywords"),
    )


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
            found[version] = _from_core_metadata(core_metadata)
    return found


def mirror_metadata(
    files: list[FileRow], storage: Any, mirror_ids: dict[str, int]
) -> Metadata | None:
    """Metadata of mirrored files of one version: read from a cached file (a wheel's before an
    sdist's), else from a cached upstream PEP 658 sidecar of one of them."""
    session = get_session()
    cached = [row for row in files if row.is_cached and row.sha256]
    for row in sorted(cached, key=lambda row: not row.filename.endswith(".whl")):
        meta = metadata_of(session, storage, mirror_ids[row.index_path], row.sha256 or "")
        if meta is not None:
            data = dataclasses.asdict(meta)
            data.pop("raw")
            return _from_core_metadata(data)
    held = _held({row.metadata_sha256 for row in files if row.is_mirrored})
    for row in files:
        if (row.index_path, row.metadata_sha256) in held:
            try:
                with storage.open(row.metadata_sha256) as source:
                    raw = source.read(MAX_METADATA_BYTES)
            except OSError:
                continue
            return _from_raw_metadata(raw)
    return None


def newest_described(
    versions: list[VersionRow], latest: str | None, storage: Any, mirror_ids: dict[str, int]
) -> tuple[str, Metadata] | None:
    """The newest version from `latest` down with metadata in a mirror's cache (read from a
    cached file of it; for `latest` also a cached upstream sidecar), and that metadata; versions
    newest first. Pre-releases above `latest` never describe the project, as on PyPI."""
    start = next((n for n, version in enumerate(versions) if version.version == latest), 0)
    for version in versions[start:]:
        if version.version == latest or any(row.is_cached for row in version.files):
            meta = mirror_metadata(version.files, storage, mirror_ids)
            if meta is not None:
                return version.version, meta
    return None


def version_data(
    name: str,
    version: VersionRow,
    meta: Metadata | None,
    root_url: str,
    doc_url: str | None,
) -> dict[str, Any]:
    """A version as JSON: devpi-like `versiondata` with `+links` to its files."""
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
    return data
