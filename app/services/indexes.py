"""Indexes: finding one, who may read it (acl_read, `may_read`), and the order in which an
index and its bases are read (`resolution_order`).

Creating and configuring indexes is app/services/indexes_config.py; merging a project across an
index and its bases into what its pages show is app/services/indexes_view.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.dists import normalize_name
from app.data.models import ANONYMOUS, AUTHENTICATED, Index, User

# What quote() leaves as it is (RFC 3986 unreserved): most filenames need no quoting at all.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
DEFAULT_ACL_READ = (ANONYMOUS,)  # everyone may read, as devpi
ACL_READ_SPECIALS = (ANONYMOUS, AUTHENTICATED)


@dataclass(frozen=True)
class Reader:
    """Who reads: a user (None: anonymous) and, for a token limited to one index, the paths
    of the indexes it may read (that index and its resolution order; None: no limit)."""

    user: User | None = None
    scope: frozenset[str] | None = None


def acl_read_of(index: Index) -> tuple[str, ...]:
    """The index's acl_read (the default, everyone, when unset)."""
    return DEFAULT_ACL_READ if index.acl_read is None else tuple(index.acl_read)


def is_public(index: Index) -> bool:
    """Whether everyone, logged in or not, may read the index (acl_read has :ANONYMOUS:)."""
    return ANONYMOUS in acl_read_of(index)


def may_read(index: Index, reader: Reader) -> bool:
    """The one rule for reading an index: its pages, files, docs, search hits and inherited
    projects. The owner and superusers always may; then acl_read decides: :ANONYMOUS:
    everyone, :AUTHENTICATED: any logged-in user, else the users it names. A token limited to
    one index reads only that index and its bases (never more than its user)."""
    if reader.scope is not None and index.path not in reader.scope:
        return False
    acl = acl_read_of(index)
    if ANONYMOUS in acl:
        return True
    user = reader.user
    if user is None:
        return False
    return (
        user.is_superuser
        or user.id == index.owner_id
        or AUTHENTICATED in acl
        or user.username in acl
    )


def file_path(index_path: str, sha256: str, filename: str) -> str:
    """The `+f` path of a file: its sha256 fixes its bytes; no query (PEP 658 appends to it)."""
    quoted = filename if _UNRESERVED.fullmatch(filename) else quote(filename)
    return f"{index_path}/+f/{sha256}/{quoted}"


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


def readable_order(session: Session, index: Index, reader: Reader | None) -> list[Index]:
    """The resolution order without the indexes `reader` may not read (None: everything)."""
    order = resolution_order(session, index)
    return order if reader is None else [i for i in order if may_read(i, reader)]


def readable_index_ids(session: Session, reader: Reader) -> list[int] | None:
    """Ids of the indexes `reader` may read, for SQL filters; None when that is every one."""
    indexes = session.scalars(select(Index)).all()
    readable = [i.id for i in indexes if may_read(i, reader)]
    return None if len(readable) == len(indexes) else readable


def is_whitelisted(stages: Iterable[Index], normalized_name: str) -> bool:
    """Whether a stage's own project may be merged with the mirror's (`mirror_whitelist`)."""
    for stage in stages:
        for entry in stage.mirror_whitelist or ():
            if entry == "*" or normalize_name(entry) == normalized_name:
                return True
    return False


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
