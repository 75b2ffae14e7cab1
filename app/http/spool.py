"""File parts of request bodies spooled to DATA_DIR/tmp and hashed as they arrive (release
uploads in app/http/upload.py, documentation zips in app/http/web/docs.py)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from app.core.dists import Hashes
from app.core.storage import DISK_FULL_ERRNOS, write_at


class Spool:
    """A file part being received: written to DATA_DIR/tmp and hashed as it arrives."""

    def __init__(
        self,
        tmp_dir: Path,
        make_room: Callable[[int], int] | None = None,
        expected_bytes: int | None = None,
    ) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload.")
        # Unbuffered: a write the full disk refuses is cut back whole (write_at), and retried.
        self.file: IO[bytes] = os.fdopen(fd, "w+b", buffering=0)
        self.path = Path(name)
        self.hashes = Hashes()
        self.make_room = make_room  # evicts mirror files (app/services/cache.py), once per upload
        self.expected_bytes = expected_bytes  # the request's Content-Length, if it gave one
        self.error: OSError | None = None  # the disk filled up: the rest is read and dropped

    def write(self, chunk: bytes) -> int:
        """Hash and write one chunk (werkzeug's multipart parser calls this).

        On a full disk least recently used mirror files are evicted to make room and the write
        is tried once more; when it fails again the partial file is emptied and the rest of the
        body is still read (and dropped), so that the client, still sending, gets the 507
        rather than a reset.
        """
        offset = self.hashes.size
        self.hashes.update(chunk)
        if self.error is not None:
            return len(chunk)
        try:
            write_at(self.file, offset, chunk)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            make_room, self.make_room = self.make_room, None
            needed = max((self.expected_bytes or 0) - offset, len(chunk))
            try:
                if make_room is None or not make_room(needed):
                    raise
                write_at(self.file, offset, chunk)
            except OSError as again:
                if again.errno not in DISK_FULL_ERRNOS:
                    raise
                self.error = again
                os.ftruncate(self.file.fileno(), 0)  # give the space back now
        return len(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def finish(self) -> None:
        """Make the received bytes durable before they are renamed into the blob store."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def discard(self) -> None:
        """Close and delete the temp file if it is still there."""
        with contextlib.suppress(OSError):  # a full disk fails the flush; the fd still closes
            self.file.close()
        self.path.unlink(missing_ok=True)
