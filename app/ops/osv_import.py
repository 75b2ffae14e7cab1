"""`pyshelf advisories import FILE`: load an OSV export of the PyPI ecosystem (a zip of OSV JSON
records, one per file, as the OSV project publishes each ecosystem) in one streaming pass.

The import replaces the whole set in one transaction: readers see the old set until the commit
and the new one after it, and a file that is no OSV export (or holds no PyPI record) changes
nothing. Records that cannot be read are skipped, counted and named; withdrawn ones are left out.
Severity (app/services/advisories.py SEVERITIES) comes from the record's own label where it has
one (GHSA's `database_specific.severity`), else from a CVSS v3 vector's base score with the
CVSS v3.1 rating scale (0.1-3.9 low, 4.0-6.9 medium = moderate, 7.0-8.9 high, 9.0-10 critical);
a record with neither (or only a CVSS v2/v4 vector) has no severity.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import delete, insert, update
from sqlalchemy.orm import Session

from app.core.dists import normalize_name
from app.core.progress import Progress
from app.data.db import begin_write
from app.data.models import Advisory, AdvisoryAffected, CachedPage, PageCacheState
from app.ops.prepare import OperationError

log = logging.getLogger(__name__)

ECOSYSTEM = "PyPI"
MAX_RECORD_BYTES = 4 * 1024 * 1024  # 4 MiB: the largest real records are a few hundred KiB
BATCH_ROWS = 1000  # rows per INSERT: few round trips, bounded memory
MAX_SUMMARY_CHARS = 300
SHOWN_PROBLEMS = 5  # bad records named in the summary; the rest are counted
LABELS = {"low": "low", "moderate": "moderate", "medium": "moderate", "high": "high"}
LABELS["critical"] = "critical"
FALLBACK_URL = "https://osv.dev/vulnerability/{id}"  # the OSV project's page of a record
# CVSS v3.1 specification, section 7.4: the metric weights of the base score
CVSS3_WEIGHTS: dict[str, dict[str, float]] = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}
CVSS3_PRIVILEGES = {"U": {"N": 0.85, "L": 0.62, "H": 0.27}, "C": {"N": 0.85, "L": 0.68, "H": 0.5}}


class ImportFailed(OperationError):
    """The file is no OSV export: nothing was changed."""


class BadRecord(ValueError):
    """One record cannot be read; it is skipped."""


@dataclasses.dataclass
class Summary:
    """What an import did."""

    loaded: int = 0
    affected: int = 0
    withdrawn: int = 0
    other_ecosystems: int = 0
    bad: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def line(self, path: Path) -> str:
        """One line for the command's output."""
        text = (
            f"advisories: loaded {self.loaded} records ({self.affected} affected packages) "
            f"from {path.name}; skipped {self.withdrawn} withdrawn, "
            f"{self.other_ecosystems} without a PyPI package, {self.bad} unreadable"
        )
        if self.problems:
            more = self.bad - len(self.problems)
            text += ": " + "; ".join(self.problems) + (f"; and {more} more" if more > 0 else "")
        return text


def _round_up(value: float) -> float:
    """CVSS v3.1 Appendix A's Roundup: the smallest one-decimal number >= value."""
    whole = round(value * 100_000)
    return whole / 100_000 if whole % 10_000 == 0 else (math.floor(whole / 10_000) + 1) / 10


def cvss3_score(vector: str) -> float | None:
    """The base score of a CVSS v3.x vector (None when it is not one)."""
    parts = vector.strip().split("/")
    if not parts or not parts[0].startswith("CVSS:3"):
        return None
    metrics = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    try:
        scope = metrics["S"]
        weights = {key: CVSS3_WEIGHTS[key][metrics[key]] for key in CVSS3_WEIGHTS}
        privileges = CVSS3_PRIVILEGES[scope][metrics["PR"]]
    except KeyError:
        return None
    base = 1 - (1 - weights["C"]) * (1 - weights["I"]) * (1 - weights["A"])
    changed = 7.52 * (base - 0.029) - 3.25 * (base - 0.02) ** 15
    impact = 6.42 * base if scope == "U" else changed
    exploitability = 8.22 * weights["AV"] * weights["AC"] * privileges * weights["UI"]
    if impact <= 0:
        return 0.0
    total = impact + exploitability if scope == "U" else 1.08 * (impact + exploitability)
    return _round_up(min(total, 10))


def rating(score: float) -> str | None:
    """CVSS v3.1 section 5's qualitative rating, in GHSA's words (medium is moderate)."""
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "moderate"
    return "low" if score > 0 else None


def severity_of(record: dict[str, Any]) -> str | None:
    """The record's severity: its own label first, else its CVSS v3 vector's rating."""
    labels = [record.get("database_specific")] + [
        a.get(key) for a in record.get("affected") or () for key in ("database_specific",)
    ]
    for specific in labels:
        if isinstance(specific, dict) and isinstance(specific.get("severity"), str):
            label = LABELS.get(specific["severity"].strip().lower())
            if label:
                return label
    vectors = list(record.get("severity") or ())
    for affected in record.get("affected") or ():
        vectors += affected.get("severity") or ()
    for entry in vectors:
        if isinstance(entry, dict) and str(entry.get("type", "")).startswith("CVSS_V3"):
            score = cvss3_score(str(entry.get("score", "")))
            if score is not None:
                return rating(score)
    return None


def _url_of(record: dict[str, Any]) -> str:
    """The advisory's own page (an ADVISORY reference, else a WEB one), else the OSV page."""
    references = [r for r in record.get("references") or () if isinstance(r, dict)]
    for kind in ("ADVISORY", "WEB"):
        for reference in references:
            url = reference.get("url")
            # only http(s): the link goes into an href of the web UI
            if (
                reference.get("type") == kind
                and isinstance(url, str)
                and url.startswith(("https://", "http://"))
                and len(url) <= 2048
            ):
                return url
    return FALLBACK_URL.format(id=record["id"])


def _sort_key(event: tuple[str, str]) -> tuple[int, Version]:
    kind, version = event
    if kind == "introduced" and version == "0":
        return (0, Version("0"))
    return (1, Version(version))


def _ranges(affected: dict[str, Any]) -> tuple[list[list[str | None]], list[str]]:
    """ECOSYSTEM ranges as [introduced, fixed, last_affected] intervals, and the fixed versions.

    OSV: events are applied in version order; `introduced` opens an interval, `fixed` closes it
    before that version, `last_affected` after it; one left open runs to the end. Other range
    types (GIT, SEMVER) say nothing about PyPI versions and are left out.
    """
    intervals: list[list[str | None]] = []
    fixed_versions: list[str] = []
    for each in affected.get("ranges") or ():
        if not isinstance(each, dict) or each.get("type") != "ECOSYSTEM":
            continue
        events = []
        for event in each.get("events") or ():
            if not isinstance(event, dict) or len(event) != 1:
                raise BadRecord("a range event is not one of introduced, fixed, last_affected")
            ((kind, version),) = event.items()
            if kind == "limit":
                continue  # limits bound GIT ranges only
            if kind not in ("introduced", "fixed", "last_affected") or not isinstance(version, str):
                raise BadRecord(f"unknown range event {str(kind)[:40]!r}")
            events.append((kind, version))
        try:
            events.sort(key=_sort_key)
        except InvalidVersion as exc:
            raise BadRecord(f"a range names no PEP 440 version: {exc}") from None
        start: str | None = None
        for kind, version in events:
            if kind == "introduced":
                start = version if start is None else start
            elif start is not None:
                end = [start, version, None] if kind == "fixed" else [start, None, version]
                intervals.append(end)
                start = None
            if kind == "fixed":
                fixed_versions.append(version)
        if start is not None:
            intervals.append([start, None, None])
    return intervals, fixed_versions


def parse_record(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]], bool] | None:
    """An OSV record as rows (advisory, affected PyPI packages) and whether it is withdrawn;
    None when it has no PyPI package; BadRecord when it cannot be read."""
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecord(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise BadRecord("not an OSV record (a JSON object)")
    osv_id = record.get("id")
    if not isinstance(osv_id, str) or not osv_id.strip() or len(osv_id) > 128:
        raise BadRecord("no id")
    if not isinstance(record.get("affected", []), list):
        raise BadRecord(f"{osv_id}: affected is not a list")
    rows = []
    for affected in record.get("affected") or ():
        package = affected.get("package") if isinstance(affected, dict) else None
        if not isinstance(package, dict) or package.get("ecosystem") != ECOSYSTEM:
            continue
        name = package.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRecord(f"{osv_id}: a PyPI package without a name")
        try:
            ranges, fixed = _ranges(affected)
        except BadRecord as exc:
            raise BadRecord(f"{osv_id}: {exc}") from None
        versions = affected.get("versions") or []
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise BadRecord(f"{osv_id}: versions is not a list of strings")
        rows.append(
            {
                "advisory_id": osv_id,
                "normalized_name": normalize_name(name),
                "ranges": ranges,
                "versions": versions,
                "fixed": fixed,
            }
        )
    if not rows:
        return None
    summary = record.get("summary") or (str(record.get("details") or "").strip().split("\n")[0])
    aliases = [a for a in record.get("aliases") or () if isinstance(a, str)]
    advisory = {
        "id": osv_id,
        "summary": str(summary)[:MAX_SUMMARY_CHARS],
        "aliases": aliases,
        "severity": severity_of(record),
        "url": _url_of(record),
        "modified": str(record.get("modified") or "")[:64],
    }
    return advisory, rows, bool(record.get("withdrawn"))


def _members(archive: zipfile.ZipFile) -> Iterator[zipfile.ZipInfo]:
    return (m for m in archive.infolist() if not m.is_dir() and m.filename.endswith(".json"))


def import_osv(session: Session, path: Path, *, progress: bool = True) -> Summary:
    """Replace the stored advisories with those of the OSV export at `path`, in one transaction
    (ImportFailed, and nothing changed, when it is no OSV export of PyPI records)."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ImportFailed(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImportFailed(
            f"{path} is not a zip file ({exc}); expected an OSV export: a zip of OSV JSON records"
        ) from None
    summary = Summary()
    with archive:
        members = list(_members(archive))
        if not members:
            raise ImportFailed(f"{path} holds no .json file: it is no OSV export")
        bar = Progress("advisories", len(members), unit="records") if progress else None
        begin_write(session)
        session.execute(delete(AdvisoryAffected))
        session.execute(delete(Advisory))
        advisories: list[dict[str, Any]] = []
        affected: list[dict[str, Any]] = []
        seen: set[str] = set()
        for member in members:
            if bar is not None:
                bar.advance(1)
            try:
                if member.file_size > MAX_RECORD_BYTES:
                    raise BadRecord(f"larger than {MAX_RECORD_BYTES // 1024 // 1024} MiB")
                parsed = parse_record(archive.read(member))
            except BadRecord as exc:
                summary.bad += 1
                if len(summary.problems) < SHOWN_PROBLEMS:
                    summary.problems.append(f"{member.filename}: {exc}")
                continue
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
                # a damaged, encrypted or oddly compressed member
                summary.bad += 1
                if len(summary.problems) < SHOWN_PROBLEMS:
                    summary.problems.append(f"{member.filename}: cannot be read ({exc})")
                continue
            if parsed is None:
                summary.other_ecosystems += 1
                continue
            advisory, rows, is_withdrawn = parsed
            if is_withdrawn:
                summary.withdrawn += 1
                continue
            if advisory["id"] in seen:
                summary.bad += 1
                if len(summary.problems) < SHOWN_PROBLEMS:
                    summary.problems.append(f"{member.filename}: {advisory['id']} again")
                continue
            seen.add(advisory["id"])
            advisories.append(advisory)
            affected += rows
            summary.loaded += 1
            summary.affected += len(rows)
            if len(affected) >= BATCH_ROWS or len(advisories) >= BATCH_ROWS:
                _flush(session, advisories, affected)
        _flush(session, advisories, affected)
        if bar is not None:
            bar.finish()
    if not summary.loaded:
        session.rollback()
        raise ImportFailed(
            f"{path} holds no readable OSV record of a PyPI package: the advisories were left "
            f"as they were ({summary.line(path).removeprefix('advisories: ')})"
        )
    # Pages that hide releases for block_vulnerable were built from the old set: forget them,
    # and bump the generation so a page built meanwhile is not stored (app/services/pagecache.py).
    session.execute(delete(CachedPage))
    session.execute(update(PageCacheState).values(generation=PageCacheState.generation + 1))
    session.commit()
    log.info(summary.line(path))
    return summary


def _flush(
    session: Session, advisories: list[dict[str, Any]], affected: list[dict[str, Any]]
) -> None:
    if advisories:
        session.execute(insert(Advisory), advisories)
    if affected:
        session.execute(insert(AdvisoryAffected), affected)
    advisories.clear()
    affected.clear()
