"""Tests damage stored blobs on purpose: the same few file verbs for the local and the S3 store."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest


class StoredBlob:
    """One blob of a test's store, treated like a file (bit rot, loss, age)."""

    def __init__(self, storage: Any, key: str) -> None:
        self.storage, self.key = storage, key
        self.path = storage.local_path(key) if hasattr(storage, "local_path") else None

    def __str__(self) -> str:
        return str(self.path) if self.path else self.storage.object_name(self.key)

    def write_bytes(self, data: bytes) -> None:
        """Replace the stored bytes behind the store's back."""
        if self.path is not None:
            self.path.write_bytes(data)
        else:
            name = self.storage.object_name(self.key)
            self.storage.client.put_object(Bucket=self.storage.bucket, Key=name, Body=data)

    def read_bytes(self) -> bytes:
        """The stored bytes."""
        with self.storage.open(self.key) as source:
            return source.read()

    def unlink(self) -> None:
        """Lose the blob."""
        self.storage.delete(self.key)

    def exists(self) -> bool:
        """Whether the blob is still stored."""
        return self.storage.exists(self.key)

    def size(self) -> int:
        """The stored length in bytes."""
        return self.storage.size(self.key)

    def age(self, seconds: float) -> None:
        """Make the blob look `seconds` old; S3 sets LastModified itself, so S3 runs skip."""
        if self.path is None:
            pytest.skip("S3 stamps LastModified itself: a blob's age cannot be faked")
        past = time.time() - seconds
        os.utime(self.path, (past, past))


def stored_blob(app: Any, key: str) -> StoredBlob:
    """The blob `key` of an app's store."""
    return StoredBlob(app.extensions["pyshelf.storage"], key)


def server_blob(server: Any, key: str) -> StoredBlob:
    """The blob `key` of a live server's store (its DATA_DIR/blobs, or its bucket)."""
    return data_dir_blob(server.data_dir, key, server.env)


def data_dir_blob(data_dir: Any, key: str, env: dict[str, str] | None = None) -> StoredBlob:
    """The blob `key` of the store a server on `data_dir` (with `env`) uses."""
    from app.core.config import Settings
    from app.core.storage_choice import make_storage
    from tests import s3server

    full = {"ENV_FILE": os.devnull, "DATA_DIR": str(data_dir), **s3server.storage_env(data_dir)}
    return StoredBlob(make_storage(Settings.from_env({**full, **(env or {})})), key)
