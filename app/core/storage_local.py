"""The blob store on local disk: one file per blob under DATA_DIR/blobs (the contract:
app/core/storage.py)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.core.storage import COPY_CHUNK_BYTES, StoredObject, check_key, placed_key


class LocalStorage:
    """Blobs as files under one directory: `ab/cd/<sha256>`; `local_path` lets views sendfile."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / ".tmp"

    def local_path(self, key: str) -> Path:
        """Where the blob lives (or would live) on disk."""
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def local_file(self, key: str) -> str:
        """local_path as a string, built without pathlib: for every cached download."""
        check_key(key)
        return f"{self.root}/{key[:2]}/{key[2:4]}/{key}"

    def open(self, key: str) -> io.BufferedReader:
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

    def commit_temp(self, key: str, tmp_path: Path, *, replace: bool = False) -> None:
        """Move a finished, fsynced temp file into place under `key` (an atomic rename: the
        same bytes, or right ones over a damaged copy, so `replace` changes nothing here)."""
        target = self.local_path(key)
        made = _make_parents(target.parent)
        os.replace(tmp_path, target)
        # The rename is durable once its folder is synced, and a folder made for it once the
        # folder holding that is: else a crash could lose a blob the database says is stored.
        for folder in (target.parent, *(new.parent for new in made)):
            fsync_dir(folder)

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        self.local_path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        """The blob's length in bytes."""
        return self.local_path(key).stat().st_size

    def objects(self) -> Iterator[StoredObject]:
        """Every file under the root (not .tmp), with its key when it is where its key says."""
        for first in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if first.name == ".tmp":
                continue
            paths = [first] if not first.is_dir() else sorted(first.iterdir())
            for second in paths:
                inner = sorted(second.iterdir()) if second.is_dir() else [second]
                for path in inner:
                    try:
                        stat = path.stat()
                    except OSError:  # evicted meanwhile
                        continue
                    key = placed_key(path.relative_to(self.root).as_posix())
                    key = key if path.is_file() else None
                    yield StoredObject(str(path), key, stat.st_size, stat.st_mtime)

    def remove_stray(self, name: str) -> None:
        """Remove a stray file (never a folder, never outside the root)."""
        path = Path(name)
        if self.root in path.parents and not path.is_dir():
            path.unlink(missing_ok=True)


def _make_parents(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; the ones made, deepest first."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def fsync_dir(folder: Path) -> None:
    """Make what changed in `folder` (names renamed, made or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
