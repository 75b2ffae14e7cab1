"""What the mirror answers: a stored blob, a stream, bytes, a size; or a domain error.

The HTTP edge turns these into responses (app/http/files.py) and status codes
(app/http/errors.py); operations (prefetch, verify --repair) read them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol


class MirrorError(Exception):
    """The mirror cannot serve what was asked; the message is the reason for people."""

    def __init__(self, message: str, *, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds  # when a retry may succeed (None: unsaid)


class NotListed(MirrorError):
    """The mirror has no such file: not on the upstream's page, not offered, not cached."""


class StillFetching(MirrorError):
    """Another worker is fetching the file and it cannot be followed now; retry shortly."""


class UpstreamFailed(MirrorError):
    """The upstream failed (or sent wrong bytes) and nothing usable is cached."""


class UpstreamTimedOut(UpstreamFailed):
    """The upstream (or another worker fetching from it) did not answer in time."""


@dataclass(frozen=True)
class Blob:
    """Stored bytes of this mirror to send: a file (or with `is_metadata`, its sidecar)."""

    key: str
    filename: str
    is_metadata: bool = False
    is_hit: bool = True  # served from the cache (False: fetched by this very request)


@dataclass(frozen=True)
class Stream:
    """Bytes as they arrive from the upstream or another worker, never to be cached by clients.

    `close` frees what the stream holds (upstream connection, part file, lock) even when the
    iterator is never started (HEAD, a client gone before the first byte).
    """

    chunks: Iterator[bytes]
    size: int | None
    close: Callable[[], None]


@dataclass(frozen=True)
class Data:
    """A sidecar's verified bytes that could not be cached (the disk refused them)."""

    data: bytes


@dataclass(frozen=True)
class Head:
    """A HEAD of a file not cached yet: its size as the page lists it, without a download."""

    size: int | None


Served = Blob | Stream | Data | Head


class PageNotes(Protocol):
    """Told what a request's answer depends on (app/http/simple.py keeps it per request)."""

    def served_stale(self, index_path: str) -> None:
        """A page of this mirror was answered from a stale cache (upstream failed or busy)."""

    def stored_page(self, before: int, after: int) -> None:
        """A page was stored, moving the page cache's generation from `before` to `after`."""


class NoNotes:
    """Notes for callers without a request (operations): nobody listens."""

    def served_stale(self, index_path: str) -> None:
        """Nothing to note."""

    def stored_page(self, before: int, after: int) -> None:
        """Nothing to note."""
