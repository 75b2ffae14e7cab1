"""Resolving requirements for target environments: which versions and files an install needs.

For each target (app/ops/targets.py) resolvelib, the resolver pip uses, picks versions from an
index's project pages: markers evaluated for that target, Requires-Python checked against it,
yanked files skipped unless pinned with == (PEP 592), pre-releases as pip takes them, extras as
separate candidates. Dependencies come from core metadata a `Source` gives: a wheel's (its PEP
658 sidecar, or the METADATA of the wheel itself), else an sdist's PKG-INFO when it is Metadata
2.2+ and does not declare Requires-Dist dynamic (PEP 643); sdists are never built. The plan names
every file a matching install needs: each wheel of a chosen version that fits a target, or its
sdist where none fits. Fetching them is app/ops/prefetch.py's job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from typing import Any, Protocol

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from resolvelib import AbstractProvider, BaseReporter, ResolutionImpossible, Resolver
from resolvelib.resolvers import ResolutionTooDeep
from resolvelib.structs import RequirementInformation

from app.core.dists import InvalidDistribution, normalize_name, parse_filename
from app.ops.requirements import RequirementLine, Requirements
from app.ops.targets import Target

log = logging.getLogger(__name__)

MAX_ROUNDS = 2000  # resolvelib's backtracking budget per target (pip uses 200000)
STATIC_SDIST_METADATA = Version("2.2")  # PEP 643: from 2.2 an sdist's fields are static unless
# listed under Dynamic


class SourceError(Exception):
    """A project page or a file's metadata could not be read; the message says why."""


class Source(Protocol):
    """Where project pages and core metadata come from (the mirror, for prefetch)."""

    def files(self, project: str) -> list[dict[str, Any]]:
        """The PEP 691 file entries of `project`'s page; SourceError when there is none."""
        ...

    def metadata(self, entry: dict[str, Any]) -> bytes:
        """The core metadata of the file `entry` names (METADATA or PKG-INFO); SourceError."""
        ...


@dataclass(frozen=True)
class PlannedFile:
    """A file the plan needs: where the index serves it and what it must hash to."""

    project: str
    version: str
    filename: str
    url: str
    sha256: str  # "" when the index lists none (it cannot be checked, nor cached)
    size: int | None
    metadata_sha256: str | None  # its PEP 658 sidecar, when the page lists one


@dataclass(frozen=True)
class Miss:
    """Something a complete install needs that the plan cannot give, and why."""

    project: str
    reason: str


@dataclass
class Plan:
    """Chosen versions per target, the files they need (each once), and what is missing."""

    targets: list[Target]
    chosen: dict[str, dict[str, str]] = field(default_factory=dict)  # target -> project -> version
    files: list[PlannedFile] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)

    @property
    def projects(self) -> dict[str, list[str]]:
        """Each project and the versions chosen for it across the targets."""
        found: dict[str, set[str]] = {}
        for versions in self.chosen.values():
            for project, version in versions.items():
                found.setdefault(project, set()).add(version)
        return {name: sorted(found[name], key=Version) for name in sorted(found)}


@dataclass(frozen=True)
class _Want:
    """A requirement as the resolver sees it: normalized name, extras, specifier, hashes."""

    name: str
    extras: frozenset[str]
    specifier: SpecifierSet
    hashes: frozenset[str]
    why: str

    @property
    def key(self) -> str:
        return _key(self.name, self.extras)

    @property
    def is_pinned(self) -> bool:
        """Pinned with == or === to one version (PEP 592 lets such a pin select yanked files)."""
        return any(s.operator in ("==", "===") and "*" not in s.version for s in self.specifier)


@dataclass(frozen=True)
class _Dist:
    """One file of a project page, parsed."""

    entry: dict[str, Any] = field(hash=False, compare=False)
    filename: str
    version: Version
    wheel_tags: frozenset[Tag] | None  # None: an sdist
    sha256: str
    is_yanked: bool
    requires_python: SpecifierSet | None


@dataclass(frozen=True)
class _Candidate:
    """A version of a project with extras, and its files that fit the target."""

    name: str
    version: Version
    extras: frozenset[str]
    dists: tuple[_Dist, ...] = field(hash=False, compare=False)

    @property
    def key(self) -> str:
        return _key(self.name, self.extras)


def _key(name: str, extras: frozenset[str]) -> str:
    return f"{name}[{','.join(sorted(extras))}]" if extras else name


def plan(requirements: Requirements, targets: Sequence[Target], source: Source) -> Plan:
    """Resolve `requirements` for each target against `source`: versions, files and misses."""
    result = Plan(list(targets))
    pages = _Pages(source)
    files: dict[str, PlannedFile] = {}
    for target in targets:
        mapping = _resolve(requirements, target, pages, result)
        chosen = result.chosen.setdefault(target.name, {})
        for candidate in mapping:
            if candidate.extras:
                continue  # the same version's base candidate carries the files
            chosen[candidate.name] = str(candidate.version)
            for dist in _needed(candidate, target):
                files.setdefault(dist.filename, _planned(candidate, dist))
    result.files = sorted(files.values(), key=lambda f: (f.project, f.filename))
    result.misses.extend(pages.misses.values())
    result.misses = list(dict.fromkeys(result.misses))
    return result


def _resolve(
    requirements: Requirements, target: Target, pages: _Pages, result: Plan
) -> list[_Candidate]:
    """The candidates chosen for `target`. A project no page lists is a miss, and resolving
    goes on without it (each at most once), so the rest is still fetched; a conflict is a
    miss for the whole target."""
    provider = _Provider(target, pages, pre=requirements.pre)
    roots = [_want(line, target) for line in requirements.lines]
    while True:  # bounded: each turn adds a project to provider.absent, or returns
        wants = [w for w in roots if w is not None and w.name not in provider.absent]
        try:
            resolution = Resolver(provider, BaseReporter()).resolve(wants, max_rounds=MAX_ROUNDS)
        except ResolutionImpossible as exc:
            causes = _unique(exc.causes)
            for cause in causes:
                reason = _impossible(cause, target, pages)
                result.misses.append(Miss(cause.requirement.name, reason))
            unlisted = {c.requirement.name for c in causes if c.requirement.name in pages.errors}
            if not unlisted or unlisted <= provider.absent:
                return []
            provider.absent |= unlisted
            continue
        except ResolutionTooDeep:
            result.misses.append(Miss("*", f"{target.name}: no resolution in {MAX_ROUNDS} rounds"))
            return []
        return list(resolution.mapping.values())


def _want(line: RequirementLine, target: Target) -> _Want | None:
    """The root requirement `line` for `target`, or None when its marker excludes it."""
    requirement = line.requirement
    if requirement.marker is not None and not _evaluate(requirement.marker, target, ""):
        return None
    return _Want(
        normalize_name(requirement.name),
        frozenset(normalize_name(e) for e in requirement.extras),
        requirement.specifier,
        line.hashes,
        line.where,
    )


def _evaluate(marker: Marker, target: Target, extra: str) -> bool:
    """Whether `marker` holds on `target` with this extra asked for (PEP 508)."""
    try:
        return bool(marker.evaluate({**target.environment, "extra": extra}))
    except (UndefinedComparison, UndefinedEnvironmentName):
        return False


def _needed(candidate: _Candidate, target: Target) -> list[_Dist]:
    """The files of `candidate` an install on `target` may take: every fitting wheel, else one
    sdist (pip prefers .tar.gz, PEP 625)."""
    wheels = [d for d in candidate.dists if d.wheel_tags is not None]
    if wheels:
        return wheels
    sdists = sorted(candidate.dists, key=lambda d: not d.filename.endswith(".tar.gz"))
    return sdists[:1]


def _planned(candidate: _Candidate, dist: _Dist) -> PlannedFile:
    metadata = dist.entry.get("core-metadata") or dist.entry.get("data-dist-info-metadata")
    metadata_sha256 = metadata.get("sha256") if isinstance(metadata, dict) else None
    size = dist.entry.get("size")
    return PlannedFile(
        candidate.name,
        str(candidate.version),
        dist.filename,
        dist.entry["url"],
        dist.sha256,
        size if isinstance(size, int) else None,
        metadata_sha256,
    )


def _unique(causes: Iterable[RequirementInformation[_Want, _Candidate]]) -> list[Any]:
    seen: dict[tuple[str, str], Any] = {}
    for cause in causes:
        seen.setdefault((cause.requirement.key, str(cause.requirement.specifier)), cause)
    return list(seen.values())


def _impossible(cause: Any, target: Target, pages: _Pages) -> str:
    """Why nothing satisfies `cause.requirement` on `target`, naming who asked for it."""
    want: _Want = cause.requirement
    parent = cause.parent
    asked_by = f"{parent.name} {parent.version}" if parent is not None else want.why
    page_error = pages.errors.get(want.name)
    if page_error is not None:
        return f"{want.name} (required by {asked_by}): {page_error}"
    hashes = ", --hash" if want.hashes else ""
    return (
        f"{want.name}{want.specifier} (required by {asked_by}): no version of {want.name} fits "
        f"{target.name} and every requirement on it (Requires-Python, wheel tags, yanked files, "
        f"pre-releases{hashes})"
    )


class _Pages:
    """Project pages and core metadata from the source, each read once for every target."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.dists: dict[str, list[_Dist]] = {}
        self.errors: dict[str, str] = {}
        self.requires: dict[str, tuple[list[Requirement], set[str]]] = {}  # by file URL
        self.misses: dict[tuple[str, str], Miss] = {}

    def of(self, name: str) -> list[_Dist]:
        """The parseable files of project `name` ([] when its page cannot be read)."""
        if name not in self.dists:
            try:
                entries = self.source.files(name)
            except SourceError as exc:
                self.errors[name] = str(exc)
                entries = []
            self.dists[name] = [d for d in (_dist(name, e) for e in entries) if d is not None]
        return self.dists[name]

    def requirements(
        self, candidate: _Candidate, target: Target
    ) -> tuple[list[Requirement], set[str]]:
        """Requires-Dist and Provides-Extra of `candidate`, from the file pip would install on
        `target`; nothing, and a miss, when it has none readable."""
        dist = _best(candidate, target)
        url = dist.entry["url"]
        if url not in self.requires:
            try:
                raw = self.source.metadata(dist.entry)
                self.requires[url] = _requires_dist(raw, dist, candidate)
            except SourceError as exc:
                self.miss(candidate, f"{dist.filename}: dependencies unknown: {exc}")
                self.requires[url] = ([], set())
        return self.requires[url]

    def miss(self, candidate: _Candidate, reason: str) -> None:
        key = (candidate.name, reason)
        self.misses.setdefault(key, Miss(candidate.name, f"{candidate.version}: {reason}"))


def _dist(name: str, entry: dict[str, Any]) -> _Dist | None:
    """A page entry parsed, or None for a file that is not a distribution of `name`."""
    filename = str(entry.get("filename", ""))
    try:
        info = parse_filename(filename)
        version = Version(str(info.version))
    except (InvalidDistribution, InvalidVersion):
        return None
    if info.normalized_name != name:
        return None
    wheel_tags: frozenset[Tag] | None = None
    if filename.endswith(".whl"):
        try:
            wheel_tags = frozenset(parse_wheel_filename(filename)[3])
        except (InvalidWheelFilename, InvalidVersion):
            return None
    requires_python = None
    if entry.get("requires-python"):
        try:
            requires_python = SpecifierSet(str(entry["requires-python"]))
        except InvalidSpecifier:  # pip ignores an invalid Requires-Python, and so do we
            requires_python = None
    return _Dist(
        entry,
        filename,
        version,
        wheel_tags,
        str((entry.get("hashes") or {}).get("sha256") or "").lower(),
        bool(entry.get("yanked")),
        requires_python,
    )


def _best(candidate: _Candidate, target: Target) -> _Dist:
    """The file pip installs on `target`: the best-ranked fitting wheel, else the sdist."""
    wheels = [d for d in candidate.dists if d.wheel_tags is not None]
    if wheels:
        return min(wheels, key=lambda d: target.tag_rank(d.wheel_tags or frozenset()) or 0)
    return _needed(candidate, target)[0]


def _requires_dist(
    raw: bytes, dist: _Dist, candidate: _Candidate
) -> tuple[list[Requirement], set[str]]:
    """The Requires-Dist and Provides-Extra of core metadata `raw` of `dist`; SourceError when
    it cannot say."""
    headers = HeaderParser().parsestr(raw.decode("utf-8", errors="replace"))
    name, version = headers.get("Name"), headers.get("Version")
    if name is None or normalize_name(name) != candidate.name:
        raise SourceError(f"its metadata names {name!r}, not {candidate.name}")
    try:
        if version is None or Version(version) != candidate.version:
            raise SourceError(f"its metadata says version {version!r}")
    except InvalidVersion:
        raise SourceError(f"its metadata says version {version!r}") from None
    if dist.wheel_tags is None:
        try:
            static = Version(headers.get("Metadata-Version", "1.0")) >= STATIC_SDIST_METADATA
        except InvalidVersion:
            static = False
        dynamic = {d.strip().lower() for d in headers.get_all("Dynamic") or []}
        if not static or "requires-dist" in dynamic:
            raise SourceError(
                "an sdist whose PKG-INFO is not Metadata-Version 2.2+ with static Requires-Dist "
                "(PEP 643); prefetch does not build sdists"
            )
    found = []
    for line in headers.get_all("Requires-Dist") or []:
        try:
            found.append(Requirement(line))
        except (InvalidRequirement, InvalidMarker) as exc:
            raise SourceError(f"bad Requires-Dist {line!r}: {exc}") from None
    provided = {normalize_name(extra) for extra in headers.get_all("Provides-Extra") or []}
    return found, provided


class _Provider(AbstractProvider[_Want, _Candidate, str]):
    """resolvelib's view of one target: candidates from the pages, dependencies from metadata."""

    def __init__(self, target: Target, pages: _Pages, *, pre: bool) -> None:
        self.target = target
        self.pages = pages
        self.pre = pre
        self.absent: set[str] = set()  # projects no page lists: left out (and reported)

    def identify(self, requirement_or_candidate: _Want | _Candidate) -> str:
        return requirement_or_candidate.key

    def get_preference(
        self,
        identifier: str,
        resolutions: Mapping[str, _Candidate],
        candidates: Mapping[str, Iterator[_Candidate]],
        information: Mapping[str, Iterator[RequirementInformation[_Want, _Candidate]]],
        backtrack_causes: Sequence[RequirementInformation[_Want, _Candidate]],
    ) -> tuple[bool, bool, str]:
        """Pinned first, then those that caused backtracking, then by name (stable)."""
        pinned = any(info.requirement.is_pinned for info in information[identifier])
        caused = any(cause.requirement.key == identifier for cause in backtrack_causes)
        return (not pinned, not caused, identifier)

    def find_matches(
        self,
        identifier: str,
        requirements: Mapping[str, Iterator[_Want]],
        incompatibilities: Mapping[str, Iterator[_Candidate]],
    ) -> list[_Candidate]:
        """Versions every requirement allows that have files fitting the target, newest first."""
        wants = list(requirements[identifier])
        if not wants:
            return []
        name, extras = wants[0].name, wants[0].extras
        excluded = {c.version for c in incompatibilities[identifier]}
        by_version: dict[Version, list[_Dist]] = {}
        for dist in self.pages.of(name):
            if self._fits(dist) and all(not w.hashes or dist.sha256 in w.hashes for w in wants):
                by_version.setdefault(dist.version, []).append(dist)
        allowed = set(by_version) - excluded
        for want in wants:
            prereleases = True if self.pre else None  # None: packaging's rule, as pip's
            allowed &= set(want.specifier.filter(allowed, prereleases=prereleases))
        found = []
        for version in sorted(allowed, reverse=True):
            dists = [d for d in by_version[version] if not d.is_yanked]
            if not dists and any(w.is_pinned for w in wants):
                dists = by_version[version]  # PEP 592: a pin may select a yanked file
            if dists:
                found.append(_Candidate(name, version, extras, tuple(dists)))
        return found

    def _fits(self, dist: _Dist) -> bool:
        """Whether `dist` can install on the target: its tags and its Requires-Python."""
        if dist.wheel_tags is not None and self.target.tag_rank(dist.wheel_tags) is None:
            return False
        python = self.target.python_version
        return dist.requires_python is None or dist.requires_python.contains(python, True)

    def is_satisfied_by(self, requirement: _Want, candidate: _Candidate) -> bool:
        if not requirement.specifier.contains(candidate.version, prereleases=True):
            return False
        return not requirement.hashes or any(
            d.sha256 in requirement.hashes for d in candidate.dists
        )

    def get_dependencies(self, candidate: _Candidate) -> list[_Want]:
        """The candidate's Requires-Dist for the target; with extras, its base version too."""
        why = f"{candidate.name} {candidate.version}"
        wanted: list[_Want] = []
        if candidate.extras:  # the extras' candidate pins its own base (as pip does)
            pin = SpecifierSet(f"=={candidate.version}")
            wanted.append(_Want(candidate.name, frozenset(), pin, frozenset(), why))
        requires, provided = self.pages.requirements(candidate, self.target)
        # pip drops (with a warning) an extra the metadata does not declare in Provides-Extra
        unknown = candidate.extras - provided
        if unknown:
            log.warning("%s does not provide the extras %s", why, ", ".join(sorted(unknown)))
        extras = sorted(candidate.extras & provided) or [""]
        for requirement in requires:
            marker = requirement.marker
            if marker is not None and not any(_evaluate(marker, self.target, e) for e in extras):
                continue
            extras_of = frozenset(normalize_name(e) for e in requirement.extras)
            name = normalize_name(requirement.name)
            if name in self.absent:
                continue
            wanted.append(_Want(name, extras_of, requirement.specifier, frozenset(), why))
        return wanted
