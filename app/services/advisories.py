"""Security advisories: which versions of a project they affect, and which of them an index's
`block_vulnerable` setting refuses (the records come from app/ops/osv_import.py; the
supply-chain guard, app/services/guard.py, keeps those releases from installers).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.dists import InvalidDistribution, parse_filename
from app.data.models import Advisory, AdvisoryAffected, File, Index, MirrorPage, Project
from app.services.indexes import is_whitelisted

log = logging.getLogger(__name__)

SEVERITIES = ("low", "moderate", "high", "critical")  # GHSA's labels, mildest first
ALL = "all"  # block_vulnerable=all: every advisory, with a severity or without
# How strict a setting is: a lower rank refuses more (what "all" refuses includes "low"'s).
RANK = {ALL: 0, **{name: number for number, name in enumerate(SEVERITIES, 1)}}
OFF_WORDS = ("", "off", "none", "false", "0")


class ThresholdError(ValueError):
    """A block_vulnerable value that is neither off, `all` nor a severity."""


def parse_threshold(value: Any) -> str | None:
    """A block_vulnerable value as stored: None (off), `all` or a severity."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ThresholdError("block_vulnerable must be a string")
    word = value.strip().lower()
    if word in OFF_WORDS:
        return None
    if word not in RANK:
        raise ThresholdError(
            f"block_vulnerable must be off, all, or a minimum severity "
            f"({', '.join(SEVERITIES)}), not {value[:50]!r}"
        )
    return word


def strictest(thresholds: Iterable[str | None]) -> str | None:
    """The setting that refuses the most of several (None when all are off)."""
    found = [t for t in thresholds if t]
    return min(found, key=RANK.__getitem__) if found else None


def refuses(threshold: str | None, severity: str | None) -> bool:
    """Whether an advisory of `severity` (None: the record gives none) hides a release under
    `threshold`: `all` refuses every one, a severity only those at least that severe."""
    if threshold is None:
        return False
    if threshold == ALL:
        return True
    return severity is not None and RANK[severity] >= RANK[threshold]


@dataclasses.dataclass(frozen=True)
class Found:
    """An advisory that affects one version, as pages show it."""

    id: str
    summary: str
    severity: str | None
    url: str
    aliases: list[str]
    fixed: list[str]

    def as_json(self) -> dict[str, Any]:
        """The JSON API's shape."""
        return dataclasses.asdict(self)


def _version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except (InvalidVersion, ValueError):  # ValueError: past int()'s 4300-digit limit
        return None


@dataclasses.dataclass
class _Affected:
    found: Found
    ranges: list[tuple[Version | None, Version | None, Version | None]]
    versions: set[Version]
    literal: set[str]  # listed versions that are no PEP 440 version: matched as text

    def covers(self, version: Version | None, text: str) -> bool:
        if text in self.literal:
            return True
        if version is None:
            return False
        if version in self.versions:
            return True
        for introduced, fixed, last_affected in self.ranges:
            if introduced is not None and version < introduced:
                continue
            if fixed is not None and version >= fixed:
                continue
            if last_affected is not None and version > last_affected:
                continue
            return True
        return False


class ProjectAdvisories:
    """The advisories of one project, loaded once to check many versions."""

    def __init__(self, rows: Sequence[tuple[AdvisoryAffected, Advisory]]) -> None:
        self.entries: list[_Affected] = []
        self.memo: dict[str, list[Found]] = {}
        for affected, advisory in rows:
            ranges = []
            for introduced, fixed, last_affected in affected.ranges or ():
                # OSV: introduced "0" is before every version
                start = None if introduced in (None, "0") else _version(introduced)
                if introduced not in (None, "0") and start is None:
                    continue  # a bound that is no PEP 440 version cannot be compared
                ranges.append((start, _version(fixed), _version(last_affected)))
            versions, literal = set(), set()
            for text in affected.versions or ():
                parsed = _version(text)
                if parsed is None:
                    literal.add(text)
                else:
                    versions.add(parsed)
            found = Found(
                id=advisory.id,
                summary=advisory.summary,
                severity=advisory.severity,
                url=advisory.url,
                aliases=list(advisory.aliases or ()),
                fixed=list(affected.fixed or ()),
            )
            self.entries.append(_Affected(found, ranges, versions, literal))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def affecting(self, version: str) -> list[Found]:
        """The advisories that affect `version`, most severe first."""
        if version not in self.memo:
            parsed = _version(version)
            hits = {e.found.id: e.found for e in self.entries if e.covers(parsed, version)}
            self.memo[version] = sorted(
                hits.values(), key=lambda f: (-RANK.get(f.severity or "", 0), f.id)
            )
        return self.memo[version]

    def refusing(self, version: str, threshold: str | None) -> list[Found]:
        """The advisories that make `threshold` refuse `version` (empty: it is served)."""
        if threshold is None or not self.entries:
            return []
        return [f for f in self.affecting(version) if refuses(threshold, f.severity)]


def for_project(session: Session, normalized_name: str) -> ProjectAdvisories:
    """The advisories of a project (normalized name, PEP 503)."""
    rows = session.execute(
        select(AdvisoryAffected, Advisory)
        .join(Advisory, Advisory.id == AdvisoryAffected.advisory_id)
        .where(AdvisoryAffected.normalized_name == normalized_name)
    ).all()
    return ProjectAdvisories([(a, b) for a, b in rows])


def thresholds_by_holder(order: Sequence[Index]) -> dict[str, str | None]:
    """For each index of a resolution order (the asked index first), the setting that holds
    for its files seen through the asked index: the strictest of every index in the order that
    reaches it through its bases (itself included), so the asked index's setting covers all it
    serves, and a base's setting follows its files into the stages built on it."""
    by_path = {i.path: i for i in order}
    reach: dict[str, set[str]] = {}

    def reached(path: str) -> set[str]:
        if path not in reach:
            reach[path] = {path}  # first: a cycle (refused by apply_config) cannot recurse
            for base in by_path[path].bases or ():
                if base in by_path:
                    reach[path] |= reached(base)
        return reach[path]

    return {
        holder.path: strictest(i.block_vulnerable for i in order if holder.path in reached(i.path))
        for holder in order
    }


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a release is refused: the advisories, and the setting that refuses it."""

    project: str
    version: str
    threshold: str
    advisories: list[Found]

    @property
    def reason(self) -> str:
        """One line for the 403's status line and the request log (pip prints it)."""
        first = self.advisories[0]
        more = len(self.advisories) - 1
        also = f" and {more} more advisor{'y' if more == 1 else 'ies'}" if more else ""
        severity = f" ({first.severity})" if first.severity else ""
        return (
            f"Vulnerable: {self.project} {self.version} is affected by {first.id}{severity}"
            f"{also}; this index refuses it (block_vulnerable={self.threshold})."
        )


@dataclasses.dataclass(frozen=True)
class Served:
    """A release an index serves (or would, but for block_vulnerable) that advisories affect."""

    project: str  # normalized name
    version: str
    index_path: str  # the index that holds its files: the asked one or a base
    refused: bool  # whether block_vulnerable hides it from installers on the asked index
    advisories: list[Found]

    def as_json(self) -> dict[str, Any]:
        """The JSON API's shape."""
        return {
            "project": self.project,
            "version": self.version,
            "index": self.index_path,
            "refused": self.refused,
            "advisories": [f.as_json() for f in self.advisories],
        }


def _held_versions(session: Session, index: Index) -> dict[str, set[str]]:
    """The versions that one index holds of projects with advisories: uploads, or a mirror's
    cached pages."""
    names = select(AdvisoryAffected.normalized_name).distinct().scalar_subquery()
    held: dict[str, set[str]] = {}
    if index.is_mirror:
        pages = session.execute(
            select(MirrorPage.normalized_name, MirrorPage.files).where(
                MirrorPage.index_id == index.id,
                MirrorPage.is_found.is_(True),
                MirrorPage.normalized_name.in_(names),
            )
        )
        for name, files in pages:
            for entry in files or ():
                version = entry.get("version")
                if version is None:
                    try:
                        version = parse_filename(entry["filename"]).version
                    except (InvalidDistribution, KeyError):
                        continue
                held.setdefault(name, set()).add(version)
    else:
        rows = session.execute(
            select(Project.normalized_name, File.version)
            .join(File, File.project_id == Project.id)
            .where(Project.index_id == index.id, Project.normalized_name.in_(names))
        )
        for name, version in rows:
            held.setdefault(name, set()).add(version)
    return held


def served_affected(
    session: Session, order: Sequence[Index], readable: Sequence[Index]
) -> list[Served]:
    """What an index serves from the indexes a reader may read (`readable`, a subset of its
    resolution `order`) that an advisory affects, by project and version. Mirrors count with
    the projects they have cached; the upstream is not asked."""
    thresholds = thresholds_by_holder(order)
    stages = [i for i in order if not i.is_mirror]
    held = {i.path: _held_versions(session, i) for i in readable}
    # A name a stage holds hides the mirrors' project of that name (dependency confusion),
    # as on the index's pages (app/services/indexes_view.py project_view).
    private = {name for i in stages for name in _held_versions(session, i)}
    results: list[Served] = []
    for name in sorted({n for versions in held.values() for n in versions}):
        known = for_project(session, name)
        for index in readable:
            if index.is_mirror and name in private and not is_whitelisted(stages, name):
                continue
            for version in sorted(held[index.path].get(name, ()), key=_sort_key):
                found = known.affecting(version)
                if found:
                    threshold = thresholds.get(index.path)
                    refused = any(refuses(threshold, f.severity) for f in found)
                    results.append(Served(name, version, index.path, refused, found))
    return results


def _sort_key(version: str) -> tuple[int, Any]:
    parsed = _version(version)
    return (0, parsed) if parsed is not None else (1, version)
