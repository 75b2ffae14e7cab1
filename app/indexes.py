"""Indexes: lookup, configuration rules, and merging an index with its bases into one view."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import INDEX_TYPES, File, Index, Project, User

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
LIST_KEYS = ("bases", "acl_upload", "mirror_whitelist")
SETTABLE_KEYS = (
    "type",
    "bases",
    "volatile",
    "acl_upload",
    "mirror_whitelist",
    "mirror_url",
    "mirror_cache_expiry",
    "title",
    "description",
)


class IndexConfigError(ValueError):
    """An index setting is invalid; the message says which and why."""


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


@dataclass(frozen=True)
class ProjectView:
    """A project as one index shows it: its own files first, then its bases' files."""

    name: str
    normalized_name: str
    dists: list[Dist]
    is_mirrored: bool  # whether any file came from a mirror (pages may then be cached longer)


class MirrorSource(Protocol):
    """What indexes.py needs from mirror indexes (implemented in mirror.py)."""

    def project(self, index: Index, normalized_name: str) -> tuple[str, list[Dist]] | None:
        """The upstream project's name and files (fetching if needed), or None if unknown."""
        ...

    def project_names(self, index: Index) -> list[str]:
        """Names of the projects this mirror has cached."""
        ...


def file_path(index_path: str, sha256: str, filename: str) -> str:
    """The `+f` path of a file: the sha256 keeps each URL's bytes fixed (R46), no query (R39)."""
    return f"{index_path}/+f/{sha256}/{quote(filename)}"


def get_index(session: Session, username: str, name: str) -> Index | None:
    """Find `username/name`."""
    return session.scalar(
        select(Index).join(Index.owner).where(User.username == username, Index.name == name)
    )


def get_index_by_path(session: Session, path: str) -> Index | None:
    """Find an index by `user/name`."""
    username, sep, name = path.partition("/")
    return get_index(session, username, name) if sep else None


def resolution_order(session: Session, index: Index) -> list[Index]:
    """The index, then its bases depth-first in order, each once; missing bases are skipped.

    A base shared by several branches comes after every index that lists it (reverse
    postorder), so in a diamond a stage is never shadowed by the mirror it builds on.
    """
    postorder: list[Index] = []
    seen: set[str] = set()

    def visit(current: Index) -> None:
        seen.add(current.path)
        for base_path in reversed(current.bases or ()):
            base = get_index_by_path(session, base_path) if base_path not in seen else None
            if base is not None:
                visit(base)
        postorder.append(current)

    visit(index)
    return postorder[::-1]


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
        )
        for f in files
    ]
    return project.name, dists


def is_whitelisted(stages: Iterable[Index], normalized_name: str) -> bool:
    """Whether a stage's own project may be merged with the mirror's (`mirror_whitelist`)."""
    from app.dists import normalize_name

    for stage in stages:
        for entry in stage.mirror_whitelist or ():
            if entry == "*" or normalize_name(entry) == normalized_name:
                return True
    return False


def project_view(
    session: Session, index: Index, normalized_name: str, mirror: MirrorSource
) -> ProjectView | None:
    """Merge a project across the index and its bases, or None if no index has it.

    A name that any stage in the chain holds hides the mirrors' project of that name (and the
    upstream is not asked) unless a stage whitelists it: protection against dependency
    confusion (R86, R87).
    """
    order = resolution_order(session, index)
    stages = [i for i in order if not i.is_mirror]
    hosted = {i.path: _hosted_dists(session, i, normalized_name) for i in stages}
    is_private = any(found is not None for found in hosted.values())
    ask_mirrors = not is_private or is_whitelisted(stages, normalized_name)

    name: str | None = None
    dists: list[Dist] = []
    seen: set[str] = set()
    is_mirrored = False
    for current in order:
        if current.is_mirror:
            found = mirror.project(current, normalized_name) if ask_mirrors else None
            is_mirrored = is_mirrored or found is not None
        else:
            found = hosted[current.path]
        if found is None:
            continue
        name = name or found[0]
        for dist in found[1]:
            if dist.filename not in seen:  # the first index that has a filename wins
                seen.add(dist.filename)
                dists.append(dist)
    if name is None:
        return None
    return ProjectView(name, normalized_name, dists, is_mirrored)


def project_names(session: Session, index: Index, mirror: MirrorSource) -> list[str]:
    """Every project name the index shows: its own, its stage bases', cached mirror ones."""
    names: dict[str, str] = {}
    from app.dists import normalize_name

    for current in resolution_order(session, index):
        if current.is_mirror:
            found = mirror.project_names(current)
        else:
            found = list(
                session.scalars(select(Project.name).where(Project.index_id == current.id))
            )
        for name in found:
            names.setdefault(normalize_name(name), name)
    return sorted(names.values(), key=str.lower)


# --- configuration -------------------------------------------------------------------------


def _as_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise IndexConfigError(f"{key} must be a list of names or a comma-separated string")


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in BOOL_WORDS:
        return BOOL_WORDS[value.lower()]
    raise IndexConfigError(f"{key} must be true or false, not {value!r}")


def normalize_config(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Check the types of index settings given as JSON or as key=value strings."""
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in SETTABLE_KEYS:
            raise IndexConfigError(
                f"unknown index setting {key!r}; known: {', '.join(SETTABLE_KEYS)}"
            )
        if key in LIST_KEYS:
            clean[key] = _as_list(key, value)
        elif key == "volatile":
            clean[key] = _as_bool(key, value)
        elif key == "mirror_cache_expiry":
            if value in (None, ""):
                clean[key] = None
            else:
                try:
                    clean[key] = int(value)
                except (TypeError, ValueError):
                    raise IndexConfigError(
                        "mirror_cache_expiry must be a number of seconds"
                    ) from None
                if clean[key] < 0:
                    raise IndexConfigError("mirror_cache_expiry must not be negative")
        elif key == "type":
            if value not in INDEX_TYPES:
                raise IndexConfigError(f"type must be 'stage' or 'mirror', not {value!r}")
            clean[key] = value
        else:
            if value is not None and not isinstance(value, str):
                raise IndexConfigError(f"{key} must be a string")
            clean[key] = value
    return clean


def _check_bases(session: Session, index_path: str, bases: list[str]) -> None:
    for base in bases:
        if get_index_by_path(session, base) is None:
            raise IndexConfigError(f"base index {base!r} does not exist")
    # A cycle exists if index_path is reachable from one of its new bases.
    stack = list(bases)
    seen: set[str] = set()
    while stack:
        path = stack.pop()
        if path == index_path:
            raise IndexConfigError(f"bases would make a cycle: {index_path} reaches itself")
        if path in seen:
            continue
        seen.add(path)
        found = get_index_by_path(session, path)
        if found is not None:
            stack.extend(found.bases or ())


def apply_config(session: Session, index: Index, changes: Mapping[str, Any]) -> None:
    """Validate and apply settings to a new or existing index (the caller commits)."""
    clean = normalize_config(changes)
    if "type" in clean and index.type and clean["type"] != index.type and index.id is not None:
        raise IndexConfigError("the type of an existing index cannot be changed")
    for key, value in clean.items():
        setattr(index, key, value)
    if index.is_mirror:
        if not index.mirror_url or not re.match(r"^https?://[^/]+", index.mirror_url):
            raise IndexConfigError("a mirror index needs mirror_url, an http(s) simple index URL")
        if index.bases:
            raise IndexConfigError("a mirror index cannot have bases")
    elif "bases" in clean:
        _check_bases(session, index.path, index.bases)


def create_index(
    session: Session, owner: User, name: str, config: Mapping[str, Any] | None = None
) -> Index:
    """Create `owner/name` (stage by default, uploads allowed to the owner); the caller commits."""
    if not NAME_RE.match(name):
        raise IndexConfigError(
            f"invalid index name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
        )
    if get_index(session, owner.username, name) is not None:
        raise IndexConfigError(f"index {owner.username}/{name} already exists")
    config = dict(config or {})
    index = Index(
        owner=owner,
        name=name,
        type=config.pop("type", "stage"),
        bases=[],
        acl_upload=[owner.username],
        mirror_whitelist=[],
        volatile=False,
        title="",
        description="",
    )
    if index.type not in INDEX_TYPES:
        raise IndexConfigError(f"type must be 'stage' or 'mirror', not {index.type!r}")
    session.add(index)
    apply_config(session, index, config)
    return index


def index_config(index: Index) -> dict[str, Any]:
    """An index's settings as the JSON API shows them (never credentials in mirror_url)."""
    from app.upstream import mask_url

    config: dict[str, Any] = {
        "type": index.type,
        "bases": list(index.bases or []),
        "volatile": index.volatile,
        "acl_upload": list(index.acl_upload or []),
        "mirror_whitelist": list(index.mirror_whitelist or []),
        "title": index.title,
        "description": index.description,
    }
    if index.is_mirror:
        config["mirror_url"] = mask_url(index.mirror_url or "")
        config["mirror_cache_expiry"] = index.mirror_cache_expiry
    return config


def may_upload(index: Index, user: User) -> bool:
    """Superusers, and users named in acl_upload (`:ANONYMOUS:` is not honoured for uploads)."""
    return user.is_superuser or user.username in (index.acl_upload or ())


def may_configure(index: Index, user: User) -> bool:
    """Superusers and the index's owner."""
    return user.is_superuser or user.id == index.owner_id


def dependents(session: Session, paths: Iterable[str]) -> dict[str, list[str]]:
    """For each of `paths` that another index lists in its bases: those indexes' paths."""
    targets = set(paths)
    found: dict[str, list[str]] = {}
    for index in session.scalars(select(Index)):
        if index.path not in targets:
            for base in index.bases or ():
                if base in targets:
                    found.setdefault(base, []).append(index.path)
    return found
