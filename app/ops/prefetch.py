"""Warming the mirror cache from a requirements file, so a team can fill it before going offline.

For each requirement it takes the version pip would pick on some platform: the pinned one
(`==`), else the highest release the specifier allows (pre-releases only when asked for or when
nothing else matches, yanked files only when pinned). It downloads every file of that version
(all platforms' wheels and the sdist) and each wheel's PEP 658 metadata. Environment markers
are ignored: every platform counts. Dependencies are not resolved: give a complete, pinned
file (`pip freeze`, `pip-compile`, `uv pip compile`), or `--deps` to follow each chosen
version's Requires-Dist the same way (highest match per name; an approximation of pip's
resolver, enough to warm a cache), read from a wheel's sidecar: the upstream's, or where a
plain upstream has none, the METADATA the mirror reads when it caches the wheel.

Downloads go through the app itself (in-process, Flask's test client), so they take exactly
the path a pip request takes: single-flight with the server's workers, hash check, accounting,
cache cap.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from flask import Flask
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from app import create_app
from app.core.config import Settings
from app.core.dists import InvalidDistribution, normalize_name, parse_filename
from app.core.progress import Progress
from app.ops.prepare import OperationError
from app.services.cache import holds
from app.services.indexes import get_index_by_path

log = logging.getLogger("pyshelf")

MIME_JSON = "application/vnd.pypi.simple.v1+json"
_OPTION_RE = re.compile(r"(^|\s)--?[a-zA-Z]")  # trailing per-requirement options (--hash=...)
INDEX_OF_FILE_RE = re.compile(r"/([^/]+/[^/]+)/\+f/")  # the index in a `+f` path


class PrefetchError(OperationError):
    """A requirements file cannot be read, or a requirement given is not one."""


@dataclass
class PrefetchSummary:
    """What a prefetch did."""

    projects: int = 0
    files: int = 0
    bytes: int = 0
    already_cached: int = 0
    not_cacheable: int = 0  # listed upstream without a sha256: pip gets them streamed, uncached
    errors: list[str] = field(default_factory=list)
    chosen: dict[str, str] = field(default_factory=dict)  # project -> version


def read_requirements(path: Path, _seen: set[Path] | None = None) -> list[Requirement]:
    """The requirements of a pip requirements file (nested -r files too); options are skipped."""
    seen = _seen if _seen is not None else set()
    path = Path(path)
    if path.resolve() in seen:
        return []
    seen.add(path.resolve())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PrefetchError(f"cannot read {path}: {exc.strerror}") from None
    requirements: list[Requirement] = []
    for number, line in enumerate(text.replace("\\\n", " ").splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ", "-r", "--requirement=")):
            nested = re.sub(r"^(-r|--requirement)[=\s]*", "", line)
            requirements += read_requirements(path.parent / nested, seen)
            continue
        if line.startswith("-"):
            log.info("%s:%d: option ignored: %s", path, number, line.split()[0])
            continue
        match = _OPTION_RE.search(line)
        if match:
            line = line[: match.start()].strip()
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            log.warning("%s:%d: skipped, not a requirement: %s", path, number, exc)
            continue
        if requirement.url:
            log.warning("%s:%d: skipped, a URL is not on an index: %s", path, number, line)
            continue
        requirements.append(requirement)
    return requirements


def choose_version(files: list[dict[str, Any]], specifier: SpecifierSet) -> Version | None:
    """The version pip would pick for `specifier` on some platform, from a project page's files."""
    by_version: dict[Version, list[dict[str, Any]]] = {}
    for entry in files:
        try:
            version = Version(str(parse_filename(entry["filename"]).version))
        except (InvalidDistribution, InvalidVersion):
            continue
        by_version.setdefault(version, []).append(entry)
    pins = [s for s in specifier if s.operator in ("==", "===") and "*" not in s.version]
    if pins:
        wanted = [v for v in by_version if specifier.contains(v, prereleases=True)]
        return max(wanted) if wanted else None
    # PEP 592: a version whose files are all yanked is not chosen unless pinned.
    usable = [v for v, entries in by_version.items() if not all(e.get("yanked") for e in entries)]
    candidates = list(specifier.filter(usable))
    return max(candidates) if candidates else None


class Prefetcher:
    """Fetches requirements' files through an app's mirror, reporting progress."""

    def __init__(
        self, app: Flask, index_path: str, *, with_deps: bool = False, progress: bool = True
    ) -> None:
        self.app = app
        self.client = app.test_client()
        self.index_path = index_path.strip("/")
        self.with_deps = with_deps
        self.progress = progress
        self.storage = app.extensions["pyshelf.storage"]
        self.fetched_early: dict[str, int] = {}  # wheels fetched to read their Requires-Dist

    def run(self, requirements: list[Requirement]) -> PrefetchSummary:
        """Download what the requirements need; errors are collected, not raised."""
        summary = PrefetchSummary()
        queue = deque(requirements)
        done: set[str] = set()
        plans: list[tuple[str, list[tuple[str, int | None, str]]]] = []
        while queue:
            requirement = queue.popleft()
            name = normalize_name(requirement.name)
            if name in done:
                continue
            done.add(name)
            planned = self._plan(requirement, summary)
            if planned is None:
                continue
            plans.append((name, planned))
            if self.with_deps:
                queue.extend(self._dependencies(requirement, planned))
        total = sum(size or 0 for _name, files in plans for _path, size, _key in files)
        bar = Progress("prefetch", total) if self.progress else None
        for _name, files in plans:
            for path, size, key in files:
                if path in self.fetched_early:
                    summary.files += 1
                    summary.bytes += self.fetched_early[path]
                    if bar:
                        bar.advance(size or 0)
                    continue
                if key and self._is_cached(path, key):
                    summary.already_cached += 1
                    if bar:
                        bar.advance(size or 0)
                    continue
                self._fetch(path, summary, bar)
        if bar:
            bar.finish()
        summary.projects = len(plans)
        return summary

    def _is_cached(self, path: str, key: str) -> bool:
        """Whether the index the `+f` path names serves `key` from its store: an upload, or a
        file that mirror fetched itself (the same bytes cached for another index do not count:
        the mirror would download them on first use)."""
        match = INDEX_OF_FILE_RE.search(path)
        if match is None or not self.storage.exists(key):
            return False
        with self.app.extensions["pyshelf.db"].session() as session:
            index = get_index_by_path(session, match.group(1))
            if index is None:
                return False
            return not index.is_mirror or holds(session, index.id, key)

    def _plan(
        self, requirement: Requirement, summary: PrefetchSummary
    ) -> list[tuple[str, int | None, str]] | None:
        """The chosen version's files as (path, size, sha256 or "") plus their sidecars."""
        name = normalize_name(requirement.name)
        response = self.client.get(
            f"/{self.index_path}/+simple/{name}/", headers={"Accept": MIME_JSON}
        )
        if response.status_code != 200:
            summary.errors.append(f"{name}: {response.status}")
            return None
        files = response.get_json()["files"]
        version = choose_version(files, requirement.specifier)
        if version is None:
            summary.errors.append(f"{requirement}: no version on {self.index_path} matches")
            return None
        summary.chosen[name] = str(version)
        planned: list[tuple[str, int | None, str]] = []
        for entry in files:
            try:
                file_version = Version(str(parse_filename(entry["filename"]).version))
            except (InvalidDistribution, InvalidVersion):
                continue
            if file_version != version:
                continue
            sha256 = (entry.get("hashes") or {}).get("sha256") or ""
            if not sha256:
                summary.not_cacheable += 1
                continue
            planned.append((entry["url"], entry.get("size"), sha256))
            metadata = entry.get("core-metadata")
            if isinstance(metadata, dict) and metadata.get("sha256"):
                planned.append((entry["url"] + ".metadata", None, metadata["sha256"]))
        return planned

    def _fetch(self, path: str, summary: PrefetchSummary, bar: Progress | None) -> None:
        response = self.client.get(path)
        try:
            if response.status_code != 200:
                summary.errors.append(f"{path.rsplit('/', 1)[-1]}: {response.status}")
                return
            for chunk in response.response:  # streams through the mirror into the cache
                summary.bytes += len(chunk)
                if bar:
                    bar.advance(len(chunk))
            summary.files += 1
        except Exception as exc:  # a failed download: say so, go on with the next file
            summary.errors.append(f"{path.rsplit('/', 1)[-1]}: {exc}")
        finally:
            response.close()

    def _dependencies(
        self, requirement: Requirement, planned: list[tuple[str, int | None, str]]
    ) -> list[Requirement]:
        """Requires-Dist of the chosen version (from a wheel's metadata), for the asked extras."""
        sidecar = next((path for path, _size, _key in planned if path.endswith(".metadata")), None)
        if sidecar is None:
            wheel = next((path for path, _size, _key in planned if path.endswith(".whl")), None)
            if wheel is None:
                return []  # sdists only: their dependencies are known after a build, not here
            # A plain upstream offers no sidecar: caching the wheel (run() would anyway) makes
            # the mirror read its METADATA, which it then serves as the sidecar.
            response = self.client.get(wheel)
            try:
                if response.status_code != 200:
                    return []
                self.fetched_early[wheel] = sum(len(chunk) for chunk in response.response)
            finally:
                response.close()
            sidecar = wheel + ".metadata"
        response = self.client.get(sidecar)
        try:
            if response.status_code != 200:
                return []
            headers = HeaderParser().parsestr(response.get_data(as_text=True))
        finally:
            response.close()
        found = []
        for line in headers.get_all("Requires-Dist") or []:
            try:
                dependency = Requirement(line)
            except InvalidRequirement:
                continue
            marker = dependency.marker
            if marker is not None and "extra" in str(marker):
                extras = requirement.extras or set()
                if not any(_extra_matches(marker, extra) for extra in extras):
                    continue
            dependency.marker = None  # every platform counts
            found.append(dependency)
        return found


def _extra_matches(marker: Any, extra: str) -> bool:
    try:
        return bool(marker.evaluate({"extra": extra}))
    except Exception:
        return True


def format_summary(summary: PrefetchSummary) -> str:
    """Lines for people."""
    lines = [
        f"prefetch: {summary.projects} projects, {summary.files} files downloaded "
        f"({summary.bytes} bytes), {summary.already_cached} already cached"
    ]
    if summary.not_cacheable:
        lines.append(f"  {summary.not_cacheable} files without a sha256 upstream (never cached)")
    for name, version in sorted(summary.chosen.items()):
        lines.append(f"  {name} {version}")
    for error in summary.errors:
        lines.append(f"  error: {error}")
    return "\n".join(lines)


def parse_requirements(paths: list[str], lines: list[str]) -> list[Requirement]:
    """The requirements of these requirements files, then of these command-line arguments."""
    requirements: list[Requirement] = []
    for path in paths:
        requirements += read_requirements(Path(path))
    for line in lines:
        try:
            requirements.append(Requirement(line))
        except InvalidRequirement as exc:
            raise PrefetchError(str(exc)) from None
    return requirements


def prefetch(
    settings: Settings, requirements: list[Requirement], index_path: str, *, with_deps: bool = False
) -> PrefetchSummary:
    """Fetch what `requirements` need into the mirror cache through an app of these settings."""
    app = create_app(dataclasses.replace(settings, access_log=False))  # no access log lines
    return Prefetcher(app, index_path, with_deps=with_deps).run(requirements)
