"""Reading one request before it is served: the body limit of each route, and the
`RequestReader` that gunicorn's event loop (`BufferingWorker`, app/http/serving.py) feeds with
the bytes of a request as they arrive, keeping them in memory or a temp file (`Inbox`) until
the request is complete, or refusing it (413 too large, 431 head too large, 400 bad framing).

Like app/http/serving.py, it imports nothing of the app or Flask at run time: gunicorn's master
loads it for the worker class and never serves a request.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.http.serving import BufferingWorker

# The routes that take files; every other request body is limited to MAX_REQUEST_BODY.
UPLOAD_ENDPOINTS = frozenset({"upload.upload", "web.doc_upload"})
FORM_OVERHEAD_BYTES = 32 << 20  # 32 MiB: an upload's text fields (a long README) on top of the file
MIN_UPLOAD_BYTES_PER_SECOND = 50_000  # 50 kB/s: each such amount received earns one more second
MEMORY_BYTES = 64 << 10  # 64 KiB of a request are kept in memory, the rest in a temp file
MAX_HEAD_BYTES = 64 << 10  # 64 KiB of request line and header fields, then 431
MAX_CHUNK_LINE_BYTES = 4096  # a chunk-size line with its extensions (RFC 9112 section 7.1)
HEAD_END = re.compile(rb"\r?\n\r?\n")


def body_limit(settings: Settings, endpoint: str | None) -> tuple[int, str]:
    """The largest request body `endpoint` takes, and the setting that says so."""
    if endpoint in UPLOAD_ENDPOINTS:
        return settings.max_upload_bytes + FORM_OVERHEAD_BYTES, "MAX_UPLOAD_SIZE"
    return settings.max_request_body_bytes, "MAX_REQUEST_BODY"


def too_large(size: int | None, limit: int, setting: str) -> str:
    """The reason a 413 gives for a body of `size` bytes (None: not known yet)."""
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    extra = " plus 32 MiB of form fields" if setting == "MAX_UPLOAD_SIZE" else ""
    return f"Request body too large: {what}; this URL takes at most {limit} ({setting}{extra})."


class Refused(Exception):
    """A request answered by the event loop itself (413, 408, 431, 400), then closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> bytes:
        """The whole HTTP/1.1 response: the reason in the status line and the body."""
        body = (self.reason + "\n").encode("latin-1", "replace")
        head = (
            f"HTTP/1.1 {self.status} {self.reason}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        return head.encode("latin-1", "replace") + body


class NeedsRoom(Exception):
    """The body about to arrive needs more disk than DATA_DIR has free: make room first."""

    def __init__(self, needed_bytes: int) -> None:
        super().__init__(needed_bytes)
        self.needed_bytes = needed_bytes


class Inbox:
    """One request's bytes as they arrive, read back by gunicorn's parser (which calls recv)."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.memory = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0
        self.offset = 0  # bytes read back so far

    def write(self, data: bytes | memoryview) -> None:
        """Keep `data`: in memory while the request is small, else in a temp file."""
        if self.file is None and len(self.memory) + len(data) > MEMORY_BYTES:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            # Unlinked at once (mode 0600): nothing is left behind whatever happens.
            self.file = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                dir=self.tmp_dir, prefix="request."
            )
            self.file.write(self.memory)
            self.memory = bytearray()
        if self.file is not None:
            self.file.write(data)
        else:
            self.memory += data
        self.size += len(data)

    def has_room(self, size: int) -> bool:
        """Whether the temp folder's disk has `size` bytes free (one statvfs: no blocking)."""
        try:
            return shutil.disk_usage(self.tmp_dir).free >= size
        except OSError:
            return True  # not there yet: writing will tell

    def recv(self, size: int) -> bytes:
        """The next bytes of the request; b"" (end of stream) once it has all been read."""
        if self.file is not None:
            if self.offset == 0:
                self.file.flush()
                self.file.seek(0)
            data = self.file.read(size)
            self.offset += len(data)
            if self.offset >= self.size:  # all read: free the disk now, not after the response
                self.close()
            return data
        with memoryview(self.memory) as view:
            data = bytes(view[self.offset : self.offset + size])
        self.offset += len(data)
        return data

    def is_read(self) -> bool:
        """Whether the parser has taken every byte of the request."""
        return self.offset >= self.size

    def close(self) -> None:
        """Drop the temp file, if any."""
        if self.file is not None:
            self.file.close()
            self.file = None


class RequestReader:
    """Reads one HTTP/1.1 request as bytes arrive: the head, then its body by its framing."""

    def __init__(self, worker: BufferingWorker, started_at: float) -> None:
        self.worker = worker
        self.started_at = started_at
        self.inbox = Inbox(worker.settings.tmp_dir)
        self.pending = bytearray()  # received, not yet taken into the inbox
        self.scanned = 0  # bytes of `pending` searched for the end of the head
        self.head_bytes = 0
        self.head_done = False
        self.is_framed = True  # False: gunicorn gets the head alone and answers 400
        self.body_bytes = 0
        self.remaining = 0  # body bytes (or bytes of the current chunk) still to come
        self.chunk_state = ""  # "", or size/data/crlf/trailer while reading a chunked body
        self.method = ""
        self.target = ""
        self.version = ""
        self.fields = ""  # the header fields as sent, after the request line
        self.limit: int | None = None
        self.setting = "MAX_REQUEST_BODY"
        self.wants_continue = False  # Expect: 100-continue, not answered yet

    @property
    def deadline(self) -> float:
        """When the request must be complete: REQUEST_TIMEOUT, plus time for a large body."""
        earned = self.body_bytes / MIN_UPLOAD_BYTES_PER_SECOND
        return self.started_at + self.worker.settings.request_timeout_seconds + earned

    def feed(self, data: bytes | memoryview) -> bytes | None:
        """Take received bytes; return what follows the request once it is complete, else None."""
        if self.remaining and not self.chunk_state and not self.pending:
            # The usual body: straight from the receive buffer to the inbox, one copy.
            taken = min(self.remaining, len(data))
            self.inbox.write(data[:taken])
            self.body_bytes += taken
            self.remaining -= taken
            return None if self.remaining else bytes(data[taken:])
        self.pending += data
        if not self.head_done:
            self._read_head()
            if not self.head_done:
                return None
        if self.chunk_state:
            self._read_chunks()
        elif self.remaining:
            taken = min(self.remaining, len(self.pending))
            self._take(taken, body=True)
            self.remaining -= taken
        if self.remaining or self.chunk_state:
            return None
        rest = bytes(self.pending)
        self.pending = bytearray()
        return rest

    def _take(self, count: int, *, body: bool) -> None:
        with memoryview(self.pending) as view:
            self.inbox.write(view[:count])
        del self.pending[:count]
        if body:
            self.body_bytes += count

    def _read_head(self) -> None:
        # RFC 9112 section 2.2: an empty line before the request line is ignored (one here).
        start = 2 if self.pending.startswith(b"\r\n") else int(self.pending.startswith(b"\n"))
        # Search only what is new: a head sent a byte at a time must not cost its square.
        match = HEAD_END.search(self.pending, max(start, self.scanned))
        if match is None:
            if len(self.pending) > MAX_HEAD_BYTES:
                raise Refused(
                    431, f"Request header fields too large: more than {MAX_HEAD_BYTES} bytes."
                )
            self.scanned = max(len(self.pending) - 3, 0)
            return
        head = bytes(self.pending[start : match.end()])
        self._take(match.end(), body=False)
        self.head_done = True
        self.head_bytes = match.end()
        self._frame(head)

    def _frame(self, head: bytes) -> None:
        """Find the body's length as gunicorn will (RFC 9112 section 6.3); unsure: unframed."""
        request_line, _, fields = head.decode("latin-1").partition("\n")
        parts = request_line.rstrip("\r").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.is_framed = False
            return
        self.method, self.target, version = parts
        self.version, self.fields = version, fields
        lowered = fields.lower()
        if "content-length" not in lowered and "transfer-encoding" not in lowered:
            return  # no body (most requests): the fields are gunicorn's to check
        lengths, codings, expect = [], [], ""
        for line in fields.splitlines():
            if not line:
                continue
            name, sep, value = line.partition(":")
            if line[0] in " \t" or not sep:  # obsolete line folding, or not a field: gunicorn's 400
                self.is_framed = False
                return
            name = name.lower()
            if name == "content-length":
                lengths.append(value.strip())
            elif name == "transfer-encoding":
                codings += [c.strip().lower() for c in value.split(",")]
            elif name == "expect":
                expect = value.strip().lower()
        if codings:
            # gunicorn refuses a length beside chunked, chunked not last, and chunked in 1.0
            if lengths or codings[-1] != "chunked" or version == "HTTP/1.0":
                self.is_framed = False
                return
            self.chunk_state = "size"
        elif lengths:
            if len(lengths) > 1 or not lengths[0].isdigit():
                self.is_framed = False
                return
            self.remaining = int(lengths[0])
            self._check_size(self.remaining, self.remaining)
        has_body = self.remaining > 0 or bool(self.chunk_state)
        # RFC 9110 section 10.1.1: the client waits for 100 before it sends the body.
        self.wants_continue = has_body and expect == "100-continue" and version != "HTTP/1.0"
        if self.remaining > MEMORY_BYTES and not self.inbox.has_room(self.remaining):
            raise NeedsRoom(self.remaining)  # the body stays pending until the loop decides

    def _check_size(self, size: int, declared: int | None) -> None:
        if size <= self.worker.settings.max_request_body_bytes:
            return
        if self.limit is None:  # only a large body pays for finding its route
            self.limit, self.setting = self.worker.limit_for(self.method, self.target)
        if size > self.limit:
            raise Refused(413, too_large(declared, self.limit, self.setting))

    def _read_chunks(self) -> None:
        """Walk a chunked body (RFC 9112 section 7.1), keeping its bytes as they are."""
        while self.pending:
            if self.chunk_state == "data":
                taken = min(self.remaining, len(self.pending))
                self._take(taken, body=True)
                self.remaining -= taken
                if self.remaining:
                    return
                self.chunk_state, self.remaining = "crlf", 2
            elif self.chunk_state == "crlf":
                taken = min(self.remaining, len(self.pending))
                if self.pending[:taken] != b"\r\n"[2 - self.remaining :][:taken]:
                    raise Refused(400, "Bad chunked body: a chunk does not end with CRLF.")
                self._take(taken, body=False)
                self.remaining -= taken
                if self.remaining:
                    return
                self.chunk_state = "size"
            else:  # a chunk-size line, or a trailer line (RFC 9112 section 7.1.2)
                end = self.pending.find(b"\n")
                if end < 0:
                    if len(self.pending) > MAX_CHUNK_LINE_BYTES:
                        raise Refused(400, "Bad chunked body: a chunk-size line is too long.")
                    return
                line = bytes(self.pending[:end]).rstrip(b"\r")
                self._take(end + 1, body=False)
                # Chunk extensions and trailers count too: they are bytes to store.
                self._check_size(self.inbox.size - self.head_bytes, None)
                if self.chunk_state == "trailer":
                    if not line:
                        self.chunk_state = ""
                        return
                    continue
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise Refused(400, "Bad chunked body: a chunk size is not hex.") from None
                if size == 0:
                    self.chunk_state = "trailer"
                    continue
                self._check_size(self.inbox.size - self.head_bytes + size, None)
                self.chunk_state, self.remaining = "data", size
