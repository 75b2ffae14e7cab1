"""The supply-chain guard: which files an index serves, and why it holds back or blocks the rest.

One home for the decisions: project pages (app/services/indexes_view.py project_view) and file URLs
(app/http/files.py) ask the same `Guard`, so a page and the files it lists always agree. A guard
is a list of rule checks; each returns a `Verdict` for a file it refuses, or None. The rules:
block rules (the server's and each index's), a mirror's release cooldown, a PEP 792 quarantine
(app/services/status.py has the markers) and an index's block_vulnerable (app/services/
advisories.py matches the advisories). Another rule kind is one more check in `guard_for`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from sqlalchemy import and_, select, true
from sqlalchemy.orm import Session

from app.core.config_kinds import parse_duration
from app.core.dists import normalize_name
from app.data.models import Index, MirrorPage, ServerBlock, User, utcnow
from app.services.advisories import ProjectAdvisories, Refusal, for_project, thresholds_by_holder
from app.services.status import QUARANTINED, Marker, is_quarantined, quarantine_reason

COOLDOWN = "cooldown"  # a mirrored file younger than the mirror's mirror_min_age
BLOCKED = "blocked"  # a file an index's or the server's block rule matches
VULNERABLE = "vulnerable"  # a release an advisory affects, refused by block_vulnerable
# QUARANTINED (app/services/status.py): every file of a project quarantined (PEP 792)
# Which rule names a file more than one refuses. A page leaves out a quarantined project's
# files first, and lists a file that a block rule or cooldown holds back as that, before
# block_vulnerable; a file URL answers the advisory's 403 first and the quarantine's 404 last.
PAGE = (QUARANTINED, BLOCKED, COOLDOWN, VULNERABLE)
FILE = (VULNERABLE, BLOCKED, COOLDOWN, QUARANTINED)
ANY_PROJECT = "*"
MAX_SPEC_CHARS = 1000
MAX_REASON_CHARS = 200  # the reason goes into an HTTP status line
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # UTC, as PEP 700 writes times
MAX_CACHED_RULE_SETS = 1024  # distinct (index, rules) pairs kept compiled per process


class GuardError(ValueError):
    """A rule or setting of the guard is invalid; the message says which and why."""


@dataclass(frozen=True)
class Verdict:
    """Why a file is not served: the rule kind, a reason a person can act on, and (for a
    cooldown) when it becomes available."""

    kind: str
    reason: str
    available_at: dt.datetime | None = None  # UTC, naive
    detail: str | None = None  # for the request log (the first advisory's id)


class Candidate(Protocol):
    """What the guard looks at in a file (app/services/indexes_view.py Dist has it)."""

    @property
    def filename(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def index_path(self) -> str: ...
    @property
    def age_from(self) -> dt.datetime | None: ...


D = TypeVar("D", bound="Candidate")

# A rule check: (normalized project name, file, parsed version or None, now) -> Verdict or None.
Check = Callable[[str, Candidate, Version | None, dt.datetime], Verdict | None]


@dataclass(frozen=True)
class FileFacts:
    """A file known by its URL alone (a file or .metadata request), for Guard.verdict."""

    filename: str
    version: str
    index_path: str
    age_from: dt.datetime | None


# --- rules as text -------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A parsed `name`, `name==1.2.3`, `name>=2,<2.1` or `*` (every project)."""

    text: str
    name: str  # normalized, or "*"
    specifier: SpecifierSet | None  # None: every version

    def matches(self, version: Version | None) -> bool:
        """Whether a version of this spec's project matches (an unparsable one only `name`)."""
        if self.specifier is None:
            return True
        return version is not None and self.specifier.contains(version, prereleases=True)


@functools.lru_cache(maxsize=65536)
def parse_spec(text: str) -> Spec:
    """Parse a rule's PEP 508 name and version specifiers (no extras, markers or URLs)."""
    text = text.strip()
    if len(text) > MAX_SPEC_CHARS:
        raise GuardError(f"a rule is longer than {MAX_SPEC_CHARS} characters")
    if text == ANY_PROJECT:
        return Spec(text, ANY_PROJECT, None)
    if text.startswith(ANY_PROJECT):  # `*>=2`: every project's versions (PEP 508 has no *)
        spec = parse_spec("any" + text[1:])
        return Spec(text, ANY_PROJECT, spec.specifier)
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        raise GuardError(
            f"{text[:100]!r} is not a rule: write name, name==1.2.3, name>=2,<2.1 or * (PEP 508)"
        ) from None
    if requirement.extras or requirement.marker or requirement.url:
        raise GuardError(f"{text[:100]!r}: a rule takes a name and versions only (no extras, ;, @)")
    specifier = requirement.specifier if str(requirement.specifier) else None
    return Spec(text, normalize_name(requirement.name), specifier)


def parse_block_rule(text: str) -> tuple[str, str]:
    """Split a block rule written `SPEC: reason` (the reason optional) and check the spec."""
    spec, _, reason = text.partition(":")
    parse_spec(spec)
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON_CHARS:
        raise GuardError(f"a block rule's reason is longer than {MAX_REASON_CHARS} characters")
    if not reason.isprintable() or (not reason.isascii() and not _latin1(reason)):
        raise GuardError("a block rule's reason must be printable Latin-1 text (an HTTP reason)")
    return spec.strip(), reason


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def parse_min_age(value: Any) -> int:
    """`3d`, `12h`, `90m`, `3600` or `0` (off) as seconds."""
    if isinstance(value, bool):
        raise GuardError("mirror_min_age must be a duration such as 3d, 12h or 0 (off)")
    if isinstance(value, int):
        seconds = value
    elif value is None or (isinstance(value, str) and not value.strip()):
        seconds = 0
    else:
        try:
            seconds = parse_duration(str(value))
        except ValueError:
            raise GuardError(
                f"mirror_min_age must be a duration such as 3d, 12h or 0 (off), not {value!r:.40}"
            ) from None
    if not 0 <= seconds <= 10 * 365 * 86_400:  # ten years
        raise GuardError("mirror_min_age must be between 0 and 10 years")
    return seconds


def parse_time(text: str) -> dt.datetime:
    """A TIME_FORMAT stamp back as a naive UTC datetime."""
    return dt.datetime.strptime(text, TIME_FORMAT)


def format_duration(seconds: int) -> str:
    """Seconds as the largest whole unit: `3d`, `12h`, `90m`, `45s`, or `0`."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s" if seconds else "0"


def merge_records(
    old: Iterable[Mapping[str, str]], wanted: Iterable[tuple[str, str]], by: str
) -> list[dict[str, str]]:
    """The records for `wanted` (spec, reason) pairs: an unchanged rule keeps who added it and
    when, a new or changed one is recorded as added by `by` now."""
    kept = {(r.get("spec", ""), r.get("reason", "")): r for r in old}
    now = utcnow().strftime(TIME_FORMAT)
    records: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for spec, reason in wanted:
        if (spec, reason) in seen:
            continue
        seen.add((spec, reason))
        record = kept.get((spec, reason)) or {"spec": spec, "reason": reason, "by": by, "at": now}
        records.append(dict(record))
    return records


def block_rule_text(record: Mapping[str, str]) -> str:
    """A block record as the settings show it: `SPEC: reason`, or `SPEC`."""
    reason = record.get("reason", "")
    return f"{record['spec']}: {reason}" if reason else record["spec"]


# --- compiled rules ------------------------------------------------------------------------


class SpecTable:
    """Specs by project name, so a file is checked against its project's rules only."""

    def __init__(self, rules: Iterable[tuple[Spec, str]]) -> None:
        self.by_name: dict[str, list[tuple[Spec, str]]] = {}
        for spec, payload in rules:
            self.by_name.setdefault(spec.name, []).append((spec, payload))
        self.every = self.by_name.pop(ANY_PROJECT, [])

    def __bool__(self) -> bool:
        return bool(self.by_name or self.every)

    def match(self, name: str, version: Version | None) -> tuple[Spec, str] | None:
        """The first rule that matches a version of `name`, with its payload."""
        for spec, payload in self.by_name.get(name, ()):
            if spec.matches(version):
                return spec, payload
        for spec, payload in self.every:
            if spec.matches(version):
                return spec, payload
        return None


SPEC_AND_REASON = operator.itemgetter("spec", "reason")
# Rules by where they are set: ("this server" or an index path, ((spec, reason), ...))
RuleGroups = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


@functools.lru_cache(maxsize=1024)
def _compiled(groups: RuleGroups) -> SpecTable:
    """Rule groups, (where, ((spec, reason), ...)), compiled once per distinct set of rules,
    not per request (the key is built at C speed: SPEC_AND_REASON over the stored records)."""
    return SpecTable(
        (parse_spec(spec), f"{where}\0{reason}")
        for where, pairs in groups
        for spec, reason in pairs
    )


def rules_digest(records: Iterable[Mapping[str, str]]) -> str:
    """The sha256 of block rules (spec and reason; "" for none): Index.blocked_digest."""
    pairs = [SPEC_AND_REASON(r) for r in records]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest() if pairs else ""


def _index_rules(index: Index) -> tuple[str, tuple[tuple[str, str], ...]]:
    """An index's rules, read from the database once per digest (their JSON is large)."""
    key = (index.path, index.blocked_digest)
    found = _RULES_BY_DIGEST.get(key)
    if found is None:
        found = (index.path, tuple(map(SPEC_AND_REASON, index.blocked or ())))
        if len(_RULES_BY_DIGEST) >= MAX_CACHED_RULE_SETS:
            _RULES_BY_DIGEST.clear()
        _RULES_BY_DIGEST[key] = found
    return found


# (index path, blocked_digest) -> its rules: a digest names its content, so every worker's
# copy is right whatever the others do (no per-process state that could disagree).
_RULES_BY_DIGEST: dict[tuple[str, str], tuple[str, tuple[tuple[str, str], ...]]] = {}


def server_rules(session: Session) -> RuleGroups:
    """The server-wide block rules (superusers set them; no index owner can lift one)."""
    rows = session.execute(select(ServerBlock.spec, ServerBlock.reason).order_by(ServerBlock.id))
    pairs = tuple((spec, reason) for spec, reason in rows)
    return (("this server", pairs),) if pairs else ()


def file_lookup(
    session: Session, username: str, name: str, project: str
) -> tuple[Index | None, RuleGroups, Marker | None]:
    """The index `username/name` of a file request, the server's block rules and (on a mirror)
    the upstream's PEP 792 status of `project` (normalized) as last fetched: one query."""
    rows = session.execute(
        select(
            Index, MirrorPage.status, MirrorPage.status_reason, ServerBlock.spec, ServerBlock.reason
        )
        .join(Index.owner)
        .outerjoin(
            MirrorPage,
            and_(
                MirrorPage.index_id == Index.id,
                MirrorPage.normalized_name == project,
                MirrorPage.is_found.is_(True),
            ),
        )
        .outerjoin(ServerBlock, true())
        .where(User.username == username, Index.name == name)
        .order_by(ServerBlock.id)
    ).all()
    if not rows:
        return None, (), None
    index, status, status_reason = rows[0][:3]
    pairs = tuple((spec, reason) for *_, spec, reason in rows if spec is not None)
    server = (("this server", pairs),) if pairs else ()
    marker = Marker(status, status_reason, index.path) if status is not None else None
    return index, server, marker


def block_check(table: SpecTable) -> Check:
    """Refuse the files a block rule matches, naming the rule, where it is set and why."""

    def check(
        name: str, dist: Candidate, version: Version | None, now: dt.datetime
    ) -> Verdict | None:
        found = table.match(name, version)
        if found is None:
            return None
        spec, payload = found
        where, _, reason = payload.partition("\0")
        because = f": {reason}" if reason else ""
        return Verdict(BLOCKED, f"{dist.filename} is blocked by {where} ({spec.text}){because}")

    return check


def cooldown_check(mirrors: Sequence[Index]) -> Check:
    """Hold back a mirror's files younger than its mirror_min_age, except its exemptions."""
    policies = {
        m.path: (
            m.mirror_min_age,
            _compiled(((m.path, tuple((r["spec"], "") for r in m.mirror_min_age_exempt or ())),)),
        )
        for m in mirrors
    }

    def check(
        name: str, dist: Candidate, version: Version | None, now: dt.datetime
    ) -> Verdict | None:
        policy = policies.get(dist.index_path)
        if policy is None or dist.age_from is None:
            return None
        min_age, exempt = policy
        available_at = dist.age_from + dt.timedelta(seconds=min_age)
        if available_at <= now or (exempt and exempt.match(name, version)):
            return None
        return Verdict(
            COOLDOWN,
            f"{dist.filename} is held back until {available_at.strftime(TIME_FORMAT)}: "
            f"{dist.index_path} serves files once they are {format_duration(min_age)} old "
            "(mirror_min_age)",
            available_at,
        )

    return check


def quarantine_check(marker: Marker) -> Check:
    """Refuse every file of a quarantined project (PEP 792: none is offered for download)."""

    def check(
        name: str, dist: Candidate, version: Version | None, now: dt.datetime
    ) -> Verdict | None:
        return Verdict(QUARANTINED, quarantine_reason(name, marker))

    return check


def vulnerable_check(session: Session, thresholds: Mapping[str, str | None], asked: str) -> Check:
    """Refuse the releases that block_vulnerable refuses for the advisories that affect them:
    each file by the setting that holds for the index it comes from (thresholds_by_holder;
    `asked`'s when it is none of them)."""
    known: dict[str, ProjectAdvisories] = {}

    def check(
        name: str, dist: Candidate, version: Version | None, now: dt.datetime
    ) -> Verdict | None:
        threshold = thresholds.get(dist.index_path, thresholds[asked])
        if threshold is None:
            return None
        if name not in known:
            known[name] = for_project(session, name)
        found = known[name].refusing(dist.version, threshold)
        if not found:
            return None
        reason = Refusal(name, dist.version, threshold, found).reason
        return Verdict(VULNERABLE, reason, detail=found[0].id)

    return check


# --- the decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """The rule checks of one view of an index; empty: every file is served."""

    checks: tuple[Check, ...]

    def verdict(self, name: str, dist: Candidate, now: dt.datetime | None = None) -> Verdict | None:
        """Why `dist` of project `name` (normalized) is not served, or None if it is."""
        if not self.checks:
            return None
        version = _version(dist.version)
        now = now or utcnow()
        for check in self.checks:
            found = check(name, dist, version, now)
            if found is not None:
                return found
        return None

    def split(
        self, name: str, dists: Sequence[D], now: dt.datetime | None = None
    ) -> tuple[list[D], list[tuple[D, Verdict]]]:
        """The files served, and the ones held back or blocked with their verdicts."""
        if not self.checks:
            return list(dists), []
        now = now or utcnow()
        served: list[D] = []
        withheld: list[tuple[D, Verdict]] = []
        for dist in dists:
            found = self.verdict(name, dist, now)
            if found is None:
                served.append(dist)
            else:
                withheld.append((dist, found))
        return served, withheld


NO_GUARD = Guard(())


@functools.lru_cache(maxsize=4096)
def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def guard_for(
    order: Sequence[Index],
    server: RuleGroups,
    *,
    marker: Marker | None = None,
    advisories: Session | None = None,
    precedence: Sequence[str] = PAGE,
) -> Guard:
    """The guard of a view made of `order` (an index and its bases): the server's block rules,
    every index's in the order, each mirror's cooldown for that mirror's files, the project's
    quarantine (`marker`, merged across the order), and with `advisories` (the session to read
    them from) block_vulnerable; the web UI leaves it out, and lists vulnerable releases with
    their advisories. `precedence` is PAGE or FILE."""
    checks: dict[str, Check] = {}
    if marker is not None and is_quarantined(marker):
        checks[QUARANTINED] = quarantine_check(marker)
    groups = server + tuple(_index_rules(i) for i in order if i.blocked_digest)
    if groups:
        checks[BLOCKED] = block_check(_compiled(groups))
    mirrors = [i for i in order if i.is_mirror and (i.mirror_min_age or 0) > 0]
    if mirrors:
        checks[COOLDOWN] = cooldown_check(mirrors)
    if advisories is not None and any(i.block_vulnerable for i in order):
        thresholds = thresholds_by_holder(order)
        checks[VULNERABLE] = vulnerable_check(advisories, thresholds, order[0].path)
    if not checks:
        return NO_GUARD
    return Guard(tuple(checks[kind] for kind in precedence if kind in checks))


def next_change_at(withheld: Iterable[tuple[Any, Verdict]]) -> dt.datetime | None:
    """When the first held-back file becomes available: what a page made now is good for."""
    times = [v.available_at for _, v in withheld if v.available_at is not None]
    return min(times) if times else None
