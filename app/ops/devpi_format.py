"""What a `devpi-export DIR` holds and how to read it: dataindex.json, the hashes of each
exported file, and devpi-server's password hashes as pyshelf can check them
(app/ops/devpi_import.py imports it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from app.ops.prepare import OperationError
from app.services.passwords import ARGON2_PREFIX, DEVPI_SHA256_PREFIX

DUMP_VERSIONS = ("1", "2")  # devpi-server 2.x and later write "2"
SHA256_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
CHUNK_BYTES = 1 << 20  # 1 MiB per read while hashing


class ExportError(OperationError):
    """The export cannot be read at all (no dataindex.json, an unknown dump version), or parts
    of it cannot be imported (then nothing is)."""


@dataclasses.dataclass(frozen=True)
class Digests:
    """What hashing one exported file found."""

    sha256: str
    blake2_256: str
    md5: str
    size: int
    checked: tuple[str, ...]  # the hash names that the export listed and that matched


def read_dataindex(directory: Path) -> dict[str, Any]:
    """The export's dataindex.json, checked for the parts the import reads."""
    path = directory / "dataindex.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(
            f"{path} does not exist: give the directory that devpi-export wrote"
        ) from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path} is not a devpi-server export")
    version = str(data.get("dumpversion", ""))
    if version not in DUMP_VERSIONS:
        raise ExportError(
            f"{path} has dumpversion {version!r}; this import reads {', '.join(DUMP_VERSIONS)}"
        )
    if not isinstance(data.get("users"), dict) or not isinstance(data.get("indexes"), dict):
        raise ExportError(f"{path} lacks the 'users' and 'indexes' of a devpi-server export")
    return data


def parse_time(value: Any) -> dt.datetime | None:
    """devpi's times: "2024-01-31T12:00:00Z", [Y, M, D, h, m, s] (UTC) or an HTTP date."""
    try:
        if isinstance(value, list) and len(value) >= 6:
            year, month, day, hour, minute, second = (int(v) for v in value[:6])
            return dt.datetime(year, month, day, hour, minute, second)  # naive UTC, as stored
        if isinstance(value, str) and value.endswith("Z"):
            return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        if isinstance(value, str):
            parsed = email.utils.parsedate_to_datetime(value)
            return parsed.astimezone(dt.UTC).replace(tzinfo=None)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def hash_file(path: Path, expected: dict[str, str]) -> tuple[Digests, list[str]]:
    """Hash a file; compare with the export's hashes. Returns the digests and the mismatches."""
    sha256, blake2, md5 = hashlib.sha256(), hashlib.blake2b(digest_size=32), hashlib.md5()  # noqa: S324 - md5 is a PyPI field, not security
    others: dict[str, Any] = {}
    for name in expected:
        if name not in ("sha256", "md5") and name in hashlib.algorithms_available:
            others[name] = hashlib.new(name)
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            size += len(chunk)
            for hasher in (sha256, blake2, md5, *others.values()):
                hasher.update(chunk)
    computed = {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}
    computed.update({name: hasher.hexdigest() for name, hasher in others.items()})
    checked, mismatches = [], []
    for name, digest in expected.items():
        if name not in computed:
            continue
        if computed[name] == str(digest).lower():
            checked.append(name)
        else:
            mismatches.append(f"{name} is {computed[name]}, the export says {digest}")
    digests = Digests(computed["sha256"], blake2.hexdigest(), computed["md5"], size, tuple(checked))
    return digests, mismatches


def expected_hashes(entry: dict[str, Any]) -> dict[str, str]:
    """The hashes the export lists for a file (`hashes`, or the older `hash_spec`/`md5`)."""
    mapping = entry.get("entrymapping") or {}
    found = {str(k).lower(): str(v) for k, v in (mapping.get("hashes") or {}).items() if v}
    spec = mapping.get("hash_spec")
    if isinstance(spec, str) and "=" in spec:
        name, _, value = spec.partition("=")
        found.setdefault(name.lower(), value)
    if mapping.get("md5"):
        found.setdefault("md5", str(mapping["md5"]))
    return found


def password_hash_from_devpi(data: dict[str, Any]) -> tuple[str | None, str]:
    """The hash to store for a devpi user (None: pyshelf cannot check it) and what it is."""
    pwhash, salt = data.get("pwhash"), data.get("pwsalt")
    if not isinstance(pwhash, str) or not pwhash:
        return None, "the export has no password for this account (an auth plugin's user?)"
    if salt:  # devpi-server < 6: sha256 of the salt followed by the password, as hex
        is_plain = isinstance(salt, str) and salt.isascii() and "$" not in salt
        if is_plain and SHA256_HEX_RE.match(pwhash):
            return f"{DEVPI_SHA256_PREFIX}{salt}${pwhash.lower()}", "salted sha256"
        return None, "a salted hash of an unknown kind"
    if pwhash.startswith(ARGON2_PREFIX):
        from argon2 import extract_parameters
        from argon2.exceptions import InvalidHashError

        try:
            extract_parameters(pwhash)
        except InvalidHashError:
            return None, "an argon2 hash that cannot be read"
        return pwhash, "argon2"
    scheme = pwhash[1:].partition("$")[0] if pwhash.startswith("$") else "unknown"
    return None, f"a hash of a scheme pyshelf cannot check ({scheme[:20]})"
