"""Creating and configuring indexes: the settable keys, their checks (`normalize_config`),
devpi's list of operations (`apply_operations`), `apply_config`, `create_index` and the
configuration as the API shows it (`index_config`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.upstream import mask_url
from app.data.models import INDEX_TYPES, Index, MirrorPage, User
from app.services import guard
from app.services.advisories import ThresholdError, parse_threshold
from app.services.indexes import (
    ACL_READ_SPECIALS,
    DEFAULT_ACL_READ,
    Reader,
    acl_read_of,
    get_index,
    get_index_by_path,
    may_read,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
LIST_KEYS = (
    "bases",
    "acl_upload",
    "acl_read",
    "mirror_whitelist",
    "mirror_min_age_exempt",
    "blocked",
)
SETTABLE_KEYS = (
    "type",
    "bases",
    "volatile",
    "acl_upload",
    "acl_read",
    "mirror_whitelist",
    "mirror_url",
    "mirror_cache_expiry",
    "mirror_min_age",
    "mirror_min_age_exempt",
    "blocked",
    "block_vulnerable",
    "offline",
    "title",
    "description",
)


class IndexConfigError(ValueError):
    """An index setting is invalid; the message says which and why."""


class IndexPermissionError(IndexConfigError):
    """The caller may not make this change at all (a 403, where a bad value is a 400)."""


MIRROR_RIGHT = (
    "only superusers may create mirror indexes or set mirror_url (the server's MIRROR_CREATE)"
)


def may_set_mirror_url(user: User, *, users_may_mirror: bool) -> bool:
    """Whether `user` may create mirrors and point them anywhere: an upstream URL makes this
    server send requests on the caller's behalf (MIRROR_CREATE; superusers only by default)."""
    return user.is_superuser or users_may_mirror


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


def _as_acl_read(value: Any) -> list[str]:
    """acl_read entries: user names and the special values (in capitals, each once)."""
    clean: list[str] = []
    for entry in _as_list("acl_read", value):
        if entry.upper() in ACL_READ_SPECIALS:
            entry = entry.upper()
        elif not NAME_RE.match(entry):
            raise IndexConfigError(
                f"acl_read entry {entry[:100]!r} is neither a user name nor one of "
                f"{', '.join(ACL_READ_SPECIALS)}"
            )
        if entry not in clean:
            clean.append(entry)
    return clean


def _as_block_rules(value: Any) -> list[tuple[str, str]]:
    """Block rules, `SPEC: reason` each (a spec may hold commas: one rule per line in text),
    or {"spec", "reason"} objects from the JSON API."""
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list | tuple):
        raise IndexConfigError("blocked must be a list of rules: 'SPEC: reason', one per line")
    rules = []
    for entry in value:
        if isinstance(entry, Mapping):
            entry = f"{entry.get('spec', '')}: {entry.get('reason', '')}"
        if not isinstance(entry, str):
            raise IndexConfigError("each blocked rule is a string 'SPEC: reason'")
        if entry.strip():
            rules.append(guard.parse_block_rule(entry))
    return rules


def normalize_config(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Check the types of index settings given as JSON or as key=value strings."""
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in SETTABLE_KEYS:
            raise IndexConfigError(
                f"unknown index setting {key!r}; known: {', '.join(SETTABLE_KEYS)}"
            )
        if key == "blocked":
            clean[key] = _as_block_rules(value)
        elif key == "mirror_min_age_exempt":
            clean[key] = [guard.parse_spec(s).text for s in _as_list(key, value)]
        elif key == "mirror_min_age":
            clean[key] = guard.parse_min_age(value)
        elif key == "acl_read":
            clean[key] = _as_acl_read(value)
        elif key in LIST_KEYS:
            clean[key] = _as_list(key, value)
        elif key in ("volatile", "offline"):
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
        elif key == "block_vulnerable":
            try:
                clean[key] = parse_threshold(value)
            except ThresholdError as exc:
                raise IndexConfigError(str(exc)) from None
        elif key == "type":
            if value not in INDEX_TYPES:
                raise IndexConfigError(f"type must be 'stage' or 'mirror', not {value!r}")
            clean[key] = value
        else:
            if value is not None and not isinstance(value, str):
                raise IndexConfigError(f"{key} must be a string")
            clean[key] = value
    return clean


def apply_operations(config: Mapping[str, Any], operations: list[Any]) -> dict[str, Any]:
    """Apply devpi's index-setting operations to a copy of `config` and return it.

    `key=value` sets a setting (lists as comma-separated values), `key+=value` adds a value to
    a list setting, `key-=value` removes one (an error if it is not there), and `key-=` resets
    the setting to its default. devpi-client sends these when the server announces the
    `server-keyvalue-parsing` feature (`devpi index USER/INDEX key+=value`).
    """
    result = {
        key: list(value) if isinstance(value, list) else value for key, value in config.items()
    }
    defaults: dict[str, Any] = {
        "volatile": False,
        "mirror_cache_expiry": None,
        "block_vulnerable": None,
        "mirror_min_age": "0",
        "acl_read": list(DEFAULT_ACL_READ),
    }
    for operation in operations:
        if not isinstance(operation, str) or "=" not in operation:
            raise IndexConfigError(
                f"expected key=value, key+=value or key-=value, not {str(operation)[:100]!r}"
            )
        key, _, value = operation.partition("=")
        kind = "set"
        if key.endswith(("+", "-")):
            kind = "add" if key.endswith("+") else ("remove" if value else "reset")
            key = key[:-1]
        key, value = key.strip(), value.strip()
        if key == "acl_read" and value.upper() in ACL_READ_SPECIALS:
            value = value.upper()
        if key not in SETTABLE_KEYS:
            raise IndexConfigError(
                f"unknown index setting {key!r}; known: {', '.join(SETTABLE_KEYS)}"
            )
        if kind == "set":
            result[key] = value
        elif kind == "reset":
            result[key] = defaults.get(key, [] if key in LIST_KEYS else "")
        elif key not in LIST_KEYS:
            raise IndexConfigError(f"{key} is not a list setting: use {key}=value")
        else:
            values = _as_list(key, result.get(key) or [])
            if kind == "add" and value not in values:
                values.append(value)
            elif kind == "remove":
                if value not in values:
                    raise IndexConfigError(f"the {key!r} setting doesn't have value {value!r}")
                values.remove(value)
            result[key] = values
    return result


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


def _check_readable_bases(
    session: Session, old: Iterable[str], new: Iterable[str], user: User
) -> None:
    """A user may add only bases they may read: inheriting is reading."""
    for path in set(new) - set(old):
        base = get_index_by_path(session, path)
        if base is not None and not may_read(base, Reader(user)):
            raise IndexConfigError(f"you may not read {path}, so you cannot inherit from it")


def apply_config(
    session: Session,
    index: Index,
    changes: Mapping[str, Any],
    *,
    user: User | None = None,
    users_may_mirror: bool = False,
) -> None:
    """Validate and apply settings to a new or existing index (the caller commits).

    With `user` (who asks for the change), new bases must be indexes that user may read, and
    a new mirror_url needs may_set_mirror_url. Without one it is the operator (CLI, bootstrap).
    """
    try:
        clean = normalize_config(changes)
    except guard.GuardError as exc:
        raise IndexConfigError(str(exc)) from None
    by = user.username if user is not None else "the operator"
    if "blocked" in clean:
        clean["blocked"] = guard.merge_records(index.blocked or (), clean["blocked"], by)
        clean["blocked_digest"] = guard.rules_digest(clean["blocked"])
    if "mirror_min_age_exempt" in clean:
        exempt = [(spec, "") for spec in clean["mirror_min_age_exempt"]]
        clean["mirror_min_age_exempt"] = [
            {k: v for k, v in r.items() if k != "reason"}
            for r in guard.merge_records(
                ({**r, "reason": ""} for r in index.mirror_min_age_exempt or ()), exempt, by
            )
        ]
    new_url = clean.get("mirror_url")
    if (
        user is not None
        and new_url
        and new_url != index.mirror_url
        and not may_set_mirror_url(user, users_may_mirror=users_may_mirror)
    ):
        raise IndexPermissionError(MIRROR_RIGHT)
    if "type" in clean and index.type and clean["type"] != index.type and index.id is not None:
        raise IndexConfigError("the type of an existing index cannot be changed")
    if user is not None and "bases" in clean:
        _check_readable_bases(session, index.bases or (), clean["bases"], user)
    old_url = index.mirror_url
    for key, value in clean.items():
        setattr(index, key, value)
    if index.id is not None and new_url and new_url != old_url:
        # A new upstream: the pages cached from the old one are revalidated on their next request.
        session.execute(
            update(MirrorPage).where(MirrorPage.index_id == index.id).values(checked_at=None)
        )
    if index.is_mirror:
        # An offline mirror serves what bundles brought: its mirror_url may stay empty.
        if (index.mirror_url or not index.offline) and not re.match(
            r"^https?://[^/]+", index.mirror_url or ""
        ):
            raise IndexConfigError(
                "a mirror index needs mirror_url, an http(s) simple index URL, or offline=true"
            )
        if index.bases:
            raise IndexConfigError("a mirror index cannot have bases")
    elif index.mirror_min_age or index.mirror_min_age_exempt:
        raise IndexConfigError(
            "mirror_min_age and its exemptions are mirror settings: a stage inherits its mirror's"
        )
    elif "bases" in clean:
        _check_bases(session, index.path, index.bases)


def create_index(
    session: Session,
    owner: User,
    name: str,
    config: Mapping[str, Any] | None = None,
    *,
    user: User | None = None,
    users_may_mirror: bool = False,
) -> Index:
    """Create `owner/name` (stage by default, uploads allowed to the owner, readable by
    everyone); the caller commits. `user` is who asks, as for apply_config."""
    is_mirror = (config or {}).get("type") == "mirror"
    if (
        is_mirror
        and user is not None
        and not may_set_mirror_url(user, users_may_mirror=users_may_mirror)
    ):
        raise IndexPermissionError(MIRROR_RIGHT)
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
        acl_read=list(DEFAULT_ACL_READ),
        mirror_whitelist=[],
        volatile=False,
        title="",
        description="",
    )
    if index.type not in INDEX_TYPES:
        raise IndexConfigError(f"type must be 'stage' or 'mirror', not {index.type!r}")
    session.add(index)
    apply_config(session, index, config, user=user, users_may_mirror=users_may_mirror)
    return index


def index_config(index: Index, *, bases: list[str] | None = None) -> dict[str, Any]:
    """An index's settings as the JSON API shows them (never credentials in mirror_url);
    `bases` replaces the stored ones (releases.shown_bases)."""
    config: dict[str, Any] = {
        "type": index.type,
        "bases": list(index.bases or []) if bases is None else bases,
        "volatile": index.volatile,
        "acl_upload": list(index.acl_upload or []),
        "acl_read": list(acl_read_of(index)),
        "mirror_whitelist": list(index.mirror_whitelist or []),
        "blocked": [guard.block_rule_text(r) for r in index.blocked or ()],
        "block_vulnerable": index.block_vulnerable,
        "title": index.title,
        "description": index.description,
    }
    if index.is_mirror:
        config["mirror_url"] = mask_url(index.mirror_url or "")
        config["mirror_cache_expiry"] = index.mirror_cache_expiry
        config["mirror_min_age"] = guard.format_duration(index.mirror_min_age or 0)
        config["mirror_min_age_exempt"] = [r["spec"] for r in index.mirror_min_age_exempt or ()]
        config["offline"] = index.is_offline
    # Who added each rule and when, as lines (devpi-client shows a list of strings); read-only:
    # sent back unchanged, it is no change
    log = [
        f"{key} {record['spec']} by {record['by']} at {record['at']}"
        for key in ("blocked", "mirror_min_age_exempt")
        for record in getattr(index, key) or ()
    ]
    if log:
        config["guard_log"] = log
    return config
