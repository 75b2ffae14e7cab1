"""The blob store's contract: file contents addressed by sha256, written atomically.

`Storage` is what every backend does; two implement it: `LocalStorage` (files under
DATA_DIR/blobs: app/core/storage_local.py) and `S3Storage` (objects in an S3-compatible
bucket: app/core/storage_s3.py). `make_storage` (app/core/storage_choice.py) picks one from
the settings, whose STORAGE_URL `parse_storage_url` reads.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_PLACED_RE = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})$")
COPY_CHUNK_BYTES = 1 << 20  # 1 MiB
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a write the disk refused for want of room


class StorageUnavailable(OSError):
    """The blob store did not answer (S3 endpoint down, denied, or failing): a 503, not a 500."""


@dataclass(frozen=True)
class StoredObject:
    """One thing found in the blob store; `key` is None when it is not a well-placed blob."""

    name: str  # a path (local) or an object key (S3): what `remove_stray` takes
    key: str | None
    size: int
    modified_at: float  # seconds since the epoch


def write_at(file: Any, offset: int, chunk: bytes) -> None:
    """Write all of `chunk` at `offset` of an unbuffered file (a raw write may be short); a
    failed write (a full disk) cuts the file back to `offset`, so a retry leaves no gap."""
    try:
        file.seek(offset)
        view = memoryview(chunk)
        while view:
            view = view[file.write(view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(file.fileno(), offset)
        raise


def placed_key(relative: str) -> str | None:
    """The key of `ab/cd/<sha256>` when ab and cd are the key's first four digits."""
    placed = _PLACED_RE.match(relative)
    if placed is None or placed.group(3)[:4] != placed.group(1) + placed.group(2):
        return None
    return placed.group(3)


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ValueError(f"blob keys are lowercase sha256 hex digests, not {key!r}")
    return key


class Storage(Protocol):
    """Four verbs over immutable blobs, then what verify, backup and hashing writers use.

    A missing blob raises FileNotFoundError; a store that does not answer, StorageUnavailable.
    """

    def open(self, key: str) -> io.BufferedReader:
        """Open a blob for reading."""
        ...

    def save(self, key: str, source: BinaryIO) -> None:
        """Store the rest of `source` under `key`, all or nothing."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the blob is stored."""
        ...

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        ...

    def size(self, key: str) -> int:
        """The blob's length in bytes."""
        ...

    def objects(self) -> Iterator[StoredObject]:
        """Everything in the store (strays too), for verify."""
        ...

    def remove_stray(self, name: str) -> None:
        """Remove something `objects` found that is not a blob."""
        ...

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """A local temp file for writers that hash while they write (then `commit_temp`)."""
        ...

    def commit_temp(self, key: str, tmp_path: Path, *, replace: bool = False) -> None:
        """Store a finished, fsynced temp file under `key` (over a damaged copy with `replace`);
        the temp file is gone after."""
        ...


def parse_storage_url(url: str) -> tuple[str, str, str]:
    """('file', folder, '') or ('s3', bucket, prefix) from STORAGE_URL; ValueError if neither."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        return "file", parts.path, ""
    if parts.scheme == "s3" and re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc):
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: no ?query or #fragment in an s3:// URL")
        return "s3", parts.netloc, parts.path.strip("/")
    raise ValueError(
        f"{url!r} is not file:///FOLDER or s3://BUCKET/PREFIX (bucket: 3-63 lowercase "
        "letters, digits, '.' or '-')"
    )
