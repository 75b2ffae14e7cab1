"""A project as an index shows it (`project_view`): its own files first, then its bases', the
mirrors asked only when no stage holds the name (dependency confusion), the guard's verdicts
applied."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.dists import normalize_name
from app.data.models import File, Index, Project
from app.services import guard, provenance
from app.services.indexes import (
    Reader,
    file_path,
    is_whitelisted,
    may_read,
    readable_order,
    resolution_order,
)
from app.services.status import QUARANTINED, Marker, hosted_marker, view_marker


@dataclass(frozen=True)
class Dist:
    """One file as an index page shows it, wherever it comes from."""

    filename: str
    path: str  # URL path below the site root, without a leading slash: USER/INDEX/+f/...
    version: str
    sha256: str | None
    size: int | None
    requires_python: str | None
    yanked: bool | str  # False, True, or the reason
    upload_time: dt.datetime | None  # UTC, naive
    metadata_sha256: str | None  # PEP 658 sidecar, when one can be served
    index_path: str
    # When a mirror's cooldown counts from (app/services/guard.py): the upstream's upload-time,
    # else when the mirror first saw the file on a refresh; None: old (uploads, first fetch)
    age_from: dt.datetime | None = None
    provenance: str | None = None  # PEP 740: URL path of its provenance object, when it has one


@dataclass(frozen=True)
class ProjectView:
    """A project as one index shows it: its own files first, then its bases' files."""

    name: str
    normalized_name: str
    dists: list[Dist]
    is_mirrored: bool  # whether any file came from a mirror (pages may then be cached longer)
    marker: Marker | None = None  # PEP 792 status (app/services/status.py); None: active
    held_back: list[Dist] = field(default_factory=list)  # quarantined: hidden from installers
    # Files the guard keeps from installers, with why (the web UI shows them greyed)
    withheld: list[tuple[Dist, guard.Verdict]] = field(default_factory=list)


class MirrorSource(Protocol):
    """What project_view needs from mirror indexes (implemented in app/services/mirror/)."""

    def project(self, index: Index, normalized_name: str) -> tuple[str, list[Dist]] | None:
        """The upstream project's name and files (fetching if needed), or None if unknown."""
        ...

    def project_names(self, index: Index) -> list[str]:
        """Names of the projects this mirror has cached."""
        ...

    def project_status(self, index: Index, normalized_name: str) -> Marker | None:
        """The upstream's PEP 792 status of a project this mirror has a page of, or None."""
        ...

    def refresh(self, index: Index, normalized_name: str) -> bool:
        """Fetch the project's page again on its next request; False if none was cached."""
        ...


def _hosted_dists(
    session: Session, index: Index, normalized_name: str
) -> tuple[str, list[Dist]] | None:
    project = session.scalar(
        select(Project).where(
            Project.index_id == index.id, Project.normalized_name == normalized_name
        )
    )
    if project is None:
        return None
    files = session.scalars(select(File).where(File.project_id == project.id)).all()
    attested = provenance.attested_files(session, project.id)
    dists = [
        Dist(
            filename=f.filename,
            path=file_path(index.path, f.sha256, f.filename),
            version=f.version,
            sha256=f.sha256,
            size=f.size,
            requires_python=f.requires_python,
            yanked=(f.yanked_reason or True) if f.yanked else False,
            upload_time=f.uploaded_at,
            metadata_sha256=f.metadata_sha256,
            index_path=index.path,
            provenance=(
                provenance.provenance_path(index.path, f.sha256, f.filename)
                if f.id in attested
                else None
            ),
        )
        for f in files
    ]
    return project.name, dists


def project_view(
    session: Session,
    index: Index,
    normalized_name: str,
    mirror: MirrorSource,
    *,
    ignore_bases: bool = False,
    reader: Reader | None = None,
    order: list[Index] | None = None,
    for_installers: bool = False,
) -> ProjectView | None:
    """Merge a project across the index and its bases, or None if no index has it.

    A name that any stage in the chain holds hides the mirrors' project of that name (and the
    upstream is not asked) unless a stage whitelists it: protection against dependency
    confusion. `ignore_bases` looks at the index alone (devpi's `?ignore_bases`).
    With a `reader`, indexes it may not read contribute no files; they still count for the
    dependency-confusion rule, or a stranger would get upstream's project of a private name.
    `order` is the index's resolution_order when the caller has it already.
    The supply-chain guard (app/services/guard.py) decides which files are served; the rest are
    `held_back` (a quarantine) or `withheld` (with the rule's verdict). `for_installers` (the
    simple pages) counts block_vulnerable too; the web UI lists those releases with their
    advisories.
    """
    if ignore_bases:
        order = [index]
    elif order is None:
        order = resolution_order(session, index)
    full_order = order
    stages = [i for i in order if not i.is_mirror]
    hosted = {i.path: _hosted_dists(session, i, normalized_name) for i in stages}
    is_private = any(found is not None for found in hosted.values())
    ask_mirrors = not is_private or is_whitelisted(stages, normalized_name)
    if reader is not None:
        order = [i for i in order if may_read(i, reader)]

    name: str | None = None
    dists: list[Dist] = []
    seen: set[str] = set()
    is_mirrored = False
    markers: list[Marker | None] = []
    for current in order:
        if current.is_mirror:
            found = mirror.project(current, normalized_name) if ask_mirrors else None
            is_mirrored = is_mirrored or found is not None
            if found is not None:
                markers.append(mirror.project_status(current, normalized_name))
        else:
            found = hosted[current.path]
            if found is not None:
                markers.append(hosted_marker(session, current, normalized_name))
        if found is None:
            continue
        name = name or found[0]
        for dist in found[1]:
            if dist.filename not in seen:  # the first index that has a filename wins
                seen.add(dist.filename)
                dists.append(dist)
    if name is None:
        return None
    marker = view_marker(markers)
    # Every index of the chain counts for the guard, also those the reader may not read: a
    # base's block rule must not be lifted by whom it hides from.
    checks = guard.guard_for(
        full_order,
        guard.server_rules(session),
        marker=marker,
        advisories=session if for_installers else None,
    )
    shown, withheld = checks.split(normalized_name, dists)
    # PEP 792: a quarantined project offers no files for download (the web UI may show them)
    held_back = [d for d, verdict in withheld if verdict.kind == QUARANTINED]
    withheld = [(d, verdict) for d, verdict in withheld if verdict.kind != QUARANTINED]
    return ProjectView(name, normalized_name, shown, is_mirrored, marker, held_back, withheld)


def project_names(
    session: Session, index: Index, mirror: MirrorSource, *, reader: Reader | None = None
) -> list[str]:
    """Every project name the index shows: its own, its stage bases', cached mirror ones
    (with a `reader`: only from the indexes it may read)."""
    names: dict[str, str] = {}
    for current in readable_order(session, index, reader):
        if current.is_mirror:
            found = mirror.project_names(current)
        else:
            found = list(
                session.scalars(select(Project.name).where(Project.index_id == current.id))
            )
        for name in found:
            names.setdefault(normalize_name(name), name)
    return sorted(names.values(), key=str.lower)
