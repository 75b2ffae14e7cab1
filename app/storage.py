"""The blob store: file contents addressed by sha256, written atomically."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
COPY_CHUNK_BYTES = 1 << 20  # 1 MiB


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ValueError(f"blob keys are lowercase sha256 hex digests, not {key!r}")
    return key


class Storage(Protocol):
    """Four verbs over immutable blobs; a missing blob raises FileNotFoundError."""

    def open(self, key: str) -> BinaryIO:
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


class LocalStorage:
    """Blobs as files under one directory: `ab/cd/<sha256>`; `local_path` lets views sendfile."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / ".tmp"

    def local_path(self, key: str) -> Path:
        """Where the blob lives (or would live) on disk."""
        _check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def open(self, key: str) -> BinaryIO:
        """Open a blob for reading."""
        return open(self.local_path(key), "rb")

    def exists(self, key: str) -> bool:
        """Whether the blob is stored."""
        return self.local_path(key).is_file()

    def save(self, key: str, source: BinaryIO) -> None:
        """Copy `source` to a temp file, fsync it, then rename it into place."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix=key[:16] + ".")
        try:
            with os.fdopen(fd, "wb") as tmp:
                shutil.copyfileobj(source, tmp, COPY_CHUNK_BYTES)
                tmp.flush()
                os.fsync(tmp.fileno())
            self.commit_temp(key, Path(tmp_name))
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """A temp file on the blobs' filesystem, for writers that hash while they write."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="stream.")
        return os.fdopen(fd, "wb"), Path(tmp_name)

    def commit_temp(self, key: str, tmp_path: Path) -> None:
        """Move a finished, fsynced temp file into place under `key` (atomic rename)."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        self.local_path(key).unlink(missing_ok=True)
