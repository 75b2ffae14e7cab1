"""Which cached metadata describes a mirrored project: one rule for the web pages and search.

A plain PEP 503 upstream gives no description; a mirror reads it from the files it cached
(app/services/mirror_metadata.py). The newest version, from the latest release down, with a file
this mirror holds (or, for the latest, an upstream PEP 658 sidecar it holds) describes the
project. Only what the mirror itself holds counts (MirrorHolding, issue #15): the blob store is
shared, and another mirror's cache must not describe a project here.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Protocol

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.dist_metadata import MAX_METADATA_BYTES, CoreMetadata, parse_metadata
from app.core.dists import InvalidDistribution, parse_filename
from app.data.models import Index, MirrorFile, MirrorHolding, MirrorPage, User
from app.services.cache_blobs import held_by

log = logging.getLogger(__name__)

MAX_SIDECAR_BYTES = 4 << 20  # 4 MiB: a cached upstream METADATA file read for a description


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


class Blobs(Protocol):
    """The part of app/core/storage.py's Storage that reading metadata needs."""

    def open(self, key: str) -> IO[bytes]:
        """The blob's bytes; FileNotFoundError when it is missing."""
        ...


class ListedFile(Protocol):
    """A file of a project as the rule reads it (the web's FileRow is one)."""

    @property
    def filename(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def metadata_sha256(self) -> str | None: ...  # the upstream's PEP 658 sidecar
    @property
    def index_path(self) -> str: ...  # the index that lists it
    @property
    def is_mirrored(self) -> bool: ...
    @property
    def is_cached(self) -> bool | None: ...  # the mirror holds its bytes


class ListedVersion(Protocol):
    """A version with its files (the web's VersionRow is one)."""

    @property
    def version(self) -> str: ...
    @property
    def files(self) -> Sequence[ListedFile]: ...


@dataclasses.dataclass(frozen=True)
class _File:
    filename: str
    sha256: str | None
    metadata_sha256: str | None
    index_path: str
    is_mirrored: bool
    is_cached: bool | None


@dataclasses.dataclass(frozen=True)
class _Version:
    version: str
    files: list[_File]


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
    candidates = [v for v in versions if not versions[v]] or list(versions)
    keys = {version: version_key(version) for version in candidates}
    finals = [v for v in candidates if keys[v][0] and not _is_pre(keys[v][1])]
    return max(finals or candidates, key=keys.__getitem__, default=None)


def _is_pre(version: Version) -> bool:
    return version.is_prerelease or version.is_devrelease


def from_core_metadata(data: dict[str, Any]) -> Metadata:
    """The shown fields of core metadata as a dict (an upload's, or a CoreMetadata's)."""
    fields = {f.name for f in dataclasses.fields(Metadata)}
    return Metadata(**{k: v for k, v in data.items() if k in fields and v is not None})


def from_raw_metadata(raw: bytes) -> Metadata:
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


def held(session: Session, keys: Iterable[str | None]) -> set[tuple[str, str | None]]:
    """(mirror path, key) of the keys a mirror holds (fetched itself; one query): the blob store
    is shared, and another index's blob under the same key is not this mirror's to show."""
    wanted = [key for key in keys if key]
    if not wanted:
        return set()
    rows = session.execute(
        select(User.username, Index.name, MirrorHolding.sha256)
        .join(Index, Index.id == MirrorHolding.index_id)
        .join(User, User.id == Index.owner_id)
        .where(MirrorHolding.sha256.in_(wanted))
    )
    return {(f"{user}/{name}", key) for user, name, key in rows}


def metadata_of(session: Session, storage: Blobs, index_id: int, key: str) -> CoreMetadata | None:
    """The core metadata of file `key` that mirror `index_id` cached (a wheel's METADATA, an
    sdist's PKG-INFO), parsed as an upload's; None when it has none or the blob is gone."""
    row = session.get(MirrorFile, (index_id, key))
    if row is None or row.metadata_sha256 is None:
        return None
    try:
        with storage.open(row.metadata_sha256) as source:
            raw = source.read(MAX_METADATA_BYTES + 1)
        return parse_metadata(raw[:MAX_METADATA_BYTES], parse_filename(row.filename))
    except (OSError, InvalidDistribution) as exc:  # evicted meanwhile, or lost
        log.warning("core metadata of mirrored %s unreadable: %s", row.filename, exc)
        return None


def mirror_metadata(
    session: Session, storage: Blobs, files: Sequence[ListedFile], mirror_ids: Mapping[str, int]
) -> Metadata | None:
    """Metadata of mirrored files of one version: read from a cached file (a wheel's before an
    sdist's), else from a cached upstream PEP 658 sidecar of one of them."""
    cached = [row for row in files if row.is_cached and row.sha256]
    for row in sorted(cached, key=lambda row: not row.filename.endswith(".whl")):
        meta = metadata_of(session, storage, mirror_ids[row.index_path], row.sha256 or "")
        if meta is not None:
            data = dataclasses.asdict(meta)
            data.pop("raw")
            return from_core_metadata(data)
    sidecars = held(session, {row.metadata_sha256 for row in files if row.is_mirrored})
    for row in files:
        if row.metadata_sha256 and (row.index_path, row.metadata_sha256) in sidecars:
            try:
                with storage.open(row.metadata_sha256) as source:
                    raw = source.read(MAX_SIDECAR_BYTES)
            except OSError:
                continue
            return from_raw_metadata(raw)
    return None


def newest_described(
    session: Session,
    storage: Blobs,
    versions: Sequence[ListedVersion],
    latest: str | None,
    mirror_ids: Mapping[str, int],
) -> tuple[str, Metadata] | None:
    """The newest version from `latest` down with metadata in a mirror's cache (read from a
    cached file of it; for `latest` also a cached upstream sidecar), and that metadata; versions
    newest first. Pre-releases above `latest` never describe the project, as on PyPI."""
    start = next((n for n, version in enumerate(versions) if version.version == latest), 0)
    for version in versions[start:]:
        if version.version == latest or any(row.is_cached for row in version.files):
            meta = mirror_metadata(session, storage, version.files, mirror_ids)
            if meta is not None:
                return version.version, meta
    return None


def describe_page(session: Session, storage: Blobs, page: MirrorPage) -> Metadata | None:
    """The metadata that describes a project a mirror cached, by the rule the web project page
    uses (newest_described), from what this mirror alone holds; None for an upstream 404."""
    if not page.is_found:
        return None
    path = session.scalar(
        select(User.username + "/" + Index.name)
        .join(Index, Index.owner_id == User.id)
        .where(Index.id == page.index_id)
    )
    if path is None:
        return None
    entries = []
    for entry in page.files or ():
        version = entry.get("version")
        if version is None:  # pages saved before versions were stored with them
            try:
                version = parse_filename(entry["filename"]).version
            except (InvalidDistribution, KeyError):
                continue
        entries.append((version, entry))
    keys = {entry.get(name) for _, entry in entries for name in ("sha256", "metadata_sha256")}
    holdings = held_by(session, page.index_id, keys)
    if not holdings:  # no cached file and no cached sidecar: nothing here can describe it
        return None
    by_version: dict[str, list[_File]] = {}
    yanked: dict[str, bool] = {}
    for version, entry in entries:
        by_version.setdefault(version, []).append(
            _File(
                filename=entry["filename"],
                sha256=entry.get("sha256"),
                metadata_sha256=entry.get("metadata_sha256"),
                index_path=path,
                is_mirrored=True,
                is_cached=entry.get("sha256") in holdings,
            )
        )
        yanked[version] = yanked.get(version, True) and bool(entry.get("yanked"))
    # Only the latest and the versions with a cached file can describe it: newest_described
    # skips the others, so they need not be sorted (a 10,000-file page has thousands).
    latest = latest_version(yanked)
    tried = [v for v, files in by_version.items() if v == latest or any(f.is_cached for f in files)]
    versions = [_Version(v, by_version[v]) for v in newest_first(tried)]
    found = newest_described(session, storage, versions, latest, {path: page.index_id})
    return found[1] if found is not None else None
