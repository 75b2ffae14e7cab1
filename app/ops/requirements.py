"""Reading pip requirements files for prefetch: pins, ranges, extras, markers, includes, hashes."""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from app.ops.prepare import OperationError

log = logging.getLogger(__name__)

MAX_INCLUDE_DEPTH = 10  # -r inside -r: deeper than this is a loop or a mistake
# Options that choose where pip looks, not what it installs: prefetch reads its own index.
IGNORED_OPTIONS = ("-i", "--index-url", "--extra-index-url", "--trusted-host", "--no-index")
HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_COMMENT_RE = re.compile(r"(^|\s)#.*$")  # pip: a comment starts at '#' after whitespace
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^(git|hg|svn|bzr)\+")


class RequirementsError(OperationError):
    """A requirements file cannot be read, or holds a line prefetch cannot resolve."""


@dataclass(frozen=True)
class RequirementLine:
    """One requirement, the sha256 hashes its --hash options allow, and where it was written."""

    requirement: Requirement
    hashes: frozenset[str]  # lowercase hex; empty: any file
    where: str  # "requirements.txt:3"


@dataclass
class Requirements:
    """What a requirements file asks for: its requirements and whether pre-releases count."""

    lines: list[RequirementLine]
    pre: bool = False


def read_requirements(path: Path) -> Requirements:
    """The requirements of a pip requirements file and the files it includes with -r."""
    found = Requirements([])
    _read(Path(path), found, depth=0)
    return found


def parse_line(text: str, where: str = "command line") -> RequirementLine:
    """One requirement as pip takes it on a line: a name, extras, specifiers, marker, --hash."""
    requirement_text, options = _split_options(text, where)
    hashes: set[str] = set()
    for option, value in options:
        if option != "--hash":
            raise RequirementsError(
                f"{where}: option {option} is not supported after a requirement"
            )
        match = HASH_RE.match(value)
        if match is None:
            raise RequirementsError(
                f"{where}: --hash={value}: only sha256:<64 hex digits> can be checked against "
                "the index's hashes"
            )
        hashes.add(match.group(1).lower())
    if _URL_RE.match(requirement_text) or requirement_text.startswith((".", "/")):
        raise RequirementsError(
            f"{where}: {requirement_text!r} is a URL or a path, not a project on an index: "
            "prefetch resolves names only"
        )
    try:
        requirement = Requirement(requirement_text)
    except InvalidRequirement as exc:
        raise RequirementsError(f"{where}: not a requirement: {exc}") from None
    if requirement.url:
        raise RequirementsError(
            f"{where}: {requirement.name} @ {requirement.url} is a direct URL, not a project on "
            "an index: prefetch resolves names only"
        )
    return RequirementLine(requirement, frozenset(hashes), where)


def _read(path: Path, found: Requirements, depth: int, included_at: str = "") -> None:
    if depth > MAX_INCLUDE_DEPTH:
        raise RequirementsError(
            f"{included_at}: -r includes nested more than {MAX_INCLUDE_DEPTH} deep"
        )
    prefix = f"{included_at}: " if included_at else ""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RequirementsError(f"{prefix}cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RequirementsError(f"{prefix}cannot read {path}: not UTF-8 text") from None
    for number, line in _logical_lines(text):
        where = f"{path}:{number}"
        if line.startswith("-") and not line.startswith("--hash"):
            _option(path, line, where, found, depth)
        else:
            found.lines.append(parse_line(line, where))


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each non-empty line once comments and `\\` continuations
    are gone, as pip reads them."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        raw = _COMMENT_RE.sub("", raw)
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line, pending = (pending + raw).strip(), ""
        if line:
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def _option(path: Path, line: str, where: str, found: Requirements, depth: int) -> None:
    """A line that starts with an option: an include, --pre, an index option, or a refusal."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise RequirementsError(f"{where}: cannot split {line!r}: {exc}") from None
    option, _, value = words[0].partition("=")
    if not value and len(words) > 1:
        value = words[1]
    if option in ("-r", "--requirement"):
        if not value:
            raise RequirementsError(f"{where}: {option} needs a file name")
        _read(path.parent / value, found, depth + 1, where)
    elif option == "--pre":
        found.pre = True
    elif option in IGNORED_OPTIONS:
        log.info("%s: %s ignored: prefetch resolves against the index it fills", where, option)
    elif option in ("-e", "--editable"):
        raise RequirementsError(
            f"{where}: {option} {value} is an editable install from a path or VCS, not a project "
            "on an index: prefetch resolves names only"
        )
    else:
        raise RequirementsError(
            f"{where}: option {option} is not supported by prefetch (it reads names, pins, "
            "ranges, extras, markers, -r includes, --hash and --pre)"
        )


def _split_options(text: str, where: str) -> tuple[str, list[tuple[str, str]]]:
    """The requirement part of a line and its trailing options as (option, value) pairs."""
    match = re.search(r"(^|\s)--?[a-zA-Z]", text)
    if match is None:
        return text.strip(), []
    requirement, rest = text[: match.start()].strip(), text[match.start() :]
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise RequirementsError(f"{where}: cannot split {rest!r}: {exc}") from None
    options: list[tuple[str, str]] = []
    index = 0
    while index < len(words):  # bounded: each turn consumes one or two words
        option, has_value, value = words[index].partition("=")
        if not has_value:
            index += 1
            value = words[index] if index < len(words) else ""
        options.append((option, value))
        index += 1
    if not requirement:
        raise RequirementsError(f"{where}: {text!r} names no requirement")
    return requirement, options
