"""How requests come in: body limits, and the gunicorn worker that reads requests before serving.

gunicorn's gthread worker hands each connection to a thread that then blocks reading the
request: twenty clients sending a body one byte at a time park twenty threads, and nothing
else is served. `BufferingWorker` does what a buffering proxy (nginx) does instead: its event
loop reads each request whole, without blocking, within a deadline; only a complete request
reaches a thread, which reads it from memory or a temp file. A body larger than its route takes
is refused with 413 before it is read; a request that does not arrive in time gets 408.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import selectors
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote

from gunicorn import http
from gunicorn import sock as gunicorn_sock
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

if TYPE_CHECKING:
    from concurrent.futures import Future

    from flask import Flask

    from app.core.config import Settings

log = logging.getLogger(__name__)

# The routes that take files; every other request body is limited to MAX_REQUEST_BODY.
UPLOAD_ENDPOINTS = frozenset({"upload.upload", "web.doc_upload"})
FORM_OVERHEAD_BYTES = 32 << 20  # 32 MiB: an upload's text fields (a long README) on top of the file
MIN_UPLOAD_BYTES_PER_SECOND = 50_000  # 50 kB/s: each such amount received earns one more second
MEMORY_BYTES = 64 << 10  # 64 KiB of a request are kept in memory, the rest in a temp file
RECV_BYTES = 1 << 20  # 1 MiB per recv_into(), into one buffer per worker: big bodies, few calls
MAX_HEAD_BYTES = 64 << 10  # 64 KiB of request line and header fields, then 431
MAX_CHUNK_LINE_BYTES = 4096  # a chunk-size line with its extensions (RFC 9112 section 7.1)
LINGER_SECONDS = 5.0  # a refused client's time to read the answer before the socket closes
SWEEP_SECONDS = 0.5  # how often deadlines are checked
HEAD_END = re.compile(rb"\r?\n\r?\n")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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


def init_app(app: Flask) -> None:
    """Refuse large bodies in the app too, before they are read, under any WSGI server."""
    # Flask and the app's modules are imported here, not at the top: gunicorn's master loads
    # this module for BufferingWorker and never serves a request.
    from flask import request

    from app.http.errors import HTTPError

    settings = app.config["PYSHELF_SETTINGS"]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_body_bytes

    @app.before_request
    def _limit_body() -> None:
        limit, setting = body_limit(settings, request.endpoint)
        request.max_content_length = limit  # a chunked body is cut off by werkzeug at this size
        if request.content_length is not None and request.content_length > limit:
            raise HTTPError(413, too_large(request.content_length, limit, setting))


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


class Connection(TConn):
    """gunicorn's connection, with the request being read on the event loop."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.reader: RequestReader | None = None
        self.inbox: Inbox | None = None  # the request a thread is serving
        self.rest = b""  # bytes of the next request, pipelined behind the current one
        self.is_handshaking = False
        self.is_registered = False
        self.linger_until = 0.0


class BufferingWorker(ThreadWorker):
    """gthread, but a request reaches a thread only once the event loop has read all of it."""

    settings: Settings

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse at start what the request reader does not speak: HTTP/2, PROXY protocol."""
        super().check_config(cfg, log)
        if cfg.http_protocols != ["h1"] or cfg.http2_cleartext != "off":
            raise SystemExit("pyshelf: HTTP/1.1 only: leave http_protocols, http2_cleartext unset")
        if cfg.proxy_protocol != "off":
            raise SystemExit("pyshelf: the PROXY protocol is not read: leave proxy_protocol unset")

    def run(self) -> None:
        """Find the limits in the app, then serve."""
        from werkzeug.exceptions import HTTPException
        from werkzeug.routing import RoutingException

        self.settings = self.wsgi.config["PYSHELF_SETTINGS"]
        self.routes = self.wsgi.url_map.bind("localhost")
        self.no_route = (HTTPException, RoutingException)
        self.reading: set[Connection] = set()
        self.lingering: set[Connection] = set()
        self.next_sweep = 0.0
        self.recv_view = memoryview(bytearray(RECV_BYTES))  # the loop is one thread: one buffer
        # TLS_CERT and TLS_KEY are read once per worker (gunicorn read them per connection).
        self.tls = gunicorn_sock.ssl_context(self.cfg) if self.cfg.is_ssl else None
        from app.http.loopfiles import LoopFiles  # not at the top: see init_app

        self.loop_files = LoopFiles.for_worker(self)
        super().run()

    def limit_for(self, method: str, target: str) -> tuple[int, str]:
        """The body limit of the route a request target goes to, as the app will route it."""
        path = target.split("?", 1)[0]
        if not path.startswith("/"):  # absolute form: http://host/path (RFC 9112 section 3.2.2)
            path = "/" + path.split("://", 1)[-1].partition("/")[2]
        path = unquote(path)
        prefix = self.settings.script_name
        if prefix:
            if not path.startswith(prefix):
                return body_limit(self.settings, None)
            path = path[len(prefix) :] or "/"
        try:
            endpoint, _ = self.routes.match(path, method=method)
        except self.no_route:
            endpoint = None
        return body_limit(self.settings, endpoint)

    # Connections: accepted, read on the event loop, served by a thread, kept alive or closed.

    def accept(self, listener: socket.socket) -> None:
        """Take a new connection and start reading its first request."""
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = Connection(self.cfg, client, address, listener.getsockname())
        if self.tls is not None:  # set in run() when the config has TLS
            try:
                conn.sock = self.tls.wrap_socket(
                    conn.sock,
                    server_side=True,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
                    do_handshake_on_connect=False,  # done on the loop, without blocking
                )
            except (OSError, ValueError):
                self.close(conn)
                return
            conn.is_handshaking = True
        self.start_reading(conn, b"")

    def on_client_socket_readable(self, conn: Connection, client: socket.socket) -> None:
        """A kept-alive connection has a next request coming: read it here, not in a thread."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.start_reading(conn, b"")

    def start_reading(self, conn: Connection, data: bytes) -> None:
        """Read a request on `conn`, starting with `data` (pipelined bytes) if any."""
        conn.reader = RequestReader(self, time.monotonic())
        self.reading.add(conn)
        if data:
            self.feed(conn, data)
        else:
            self.on_readable(conn)

    def on_readable(self, conn: Connection, _sock: Any = None) -> None:
        """Read what has arrived; never blocks."""
        try:
            if conn.is_handshaking:
                conn.sock.do_handshake()
                conn.is_handshaking = False
            view = self.recv_view
            size = conn.sock.recv_into(view)
            # TLS: bytes decrypted already do not make the socket readable again: take them now.
            pending = getattr(conn.sock, "pending", None)  # an ssl.SSLSocket's
            while pending and 0 < size < RECV_BYTES and pending():
                size += conn.sock.recv_into(view[size:])
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self.watch(conn, self.on_readable)
            return
        except (OSError, ssl.SSLError):
            self.drop(conn)
            return
        if not size:  # the client closed: an idle kept-alive connection, or it gave up
            self.drop(conn)
            return
        self.feed(conn, view[:size])

    def feed(self, conn: Connection, data: bytes | memoryview) -> None:
        """Hand bytes to the request reader; dispatch, refuse or wait for more."""
        reader = conn.reader
        assert reader is not None  # only connections being read get here
        try:
            rest = reader.feed(data)
        except Refused as refusal:
            self.refuse(conn, refusal)
            return
        except NeedsRoom as short:
            self.make_room(conn, short.needed_bytes)
            return
        except OSError as exc:  # the temp file could not be written
            from app.http.errors import DISK_FULL_ERRNOS  # not at the top: see init_app

            log.error("cannot keep a request body in %s: %s", self.settings.tmp_dir, exc)
            if exc.errno in DISK_FULL_ERRNOS:
                self.refuse_disk_full(conn)
            else:
                self.refuse(conn, Refused(503, f"Cannot keep the request body: {exc.strerror}."))
            return
        if rest is None:
            if reader.wants_continue and not reader.body_bytes:
                reader.wants_continue = False
                try:  # 25 bytes into an idle socket's buffer: it does not block
                    conn.sock.send(CONTINUE)
                except OSError:
                    self.drop(conn)
                    return
            self.watch(conn, self.on_readable)
            return
        self.dispatch(conn, rest)

    def make_room(self, conn: Connection, needed_bytes: int) -> None:
        """A body larger than the free disk is announced: a thread evicts least recently used
        mirror files (app/services/cache.py) while the loop goes on; reading resumes if they made
        room."""
        reader = conn.reader
        self.unwatch(conn)
        cache = self.wsgi.extensions["pyshelf.mirror"].cache
        future = self.tpool.submit(cache.make_room, needed_bytes)
        future.add_done_callback(
            lambda _done: self.method_queue.defer(self.after_room, conn, reader, needed_bytes)
        )

    def after_room(self, conn: Connection, reader: RequestReader, needed_bytes: int) -> None:
        """Back on the loop after eviction: read on, or answer 507 when there is still no room."""
        if conn.reader is not reader or conn not in self.reading:
            return  # timed out (408) or dropped meanwhile
        if not reader.inbox.has_room(needed_bytes):
            self.refuse_disk_full(conn)
            return
        self.feed(conn, b"")  # the body bytes already received are pending: take them now

    def refuse_disk_full(self, conn: Connection) -> None:
        """507: the body has no room on DATA_DIR's disk (counted like the app's upload 507)."""
        from app.http import metrics  # not at the top: see init_app
        from app.http.errors import DISK_FULL

        metrics.count_write_failure("upload")
        self.refuse(conn, Refused(507, DISK_FULL))

    def dispatch(self, conn: Connection, rest: bytes) -> None:
        """Give the complete request to a thread; gunicorn's parser reads it from the inbox."""
        reader = conn.reader
        assert reader is not None
        self.unwatch(conn)
        self.reading.discard(conn)
        conn.reader = None
        # A stored file of a public index: sent from here, no thread (app/http/loopfiles.py).
        loop_files = self.loop_files if reader.is_framed and not reader.body_bytes else None
        if loop_files is not None and loop_files.serve(conn, reader, rest):
            return
        conn.inbox = reader.inbox
        conn.rest = rest if reader.is_framed else b""
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.inbox, conn.client)
        else:
            conn.parser.unreader.sock = conn.inbox
        conn.initialized = conn.data_ready = True  # TConn.init: the TLS handshake is done
        self.enqueue_req(conn)

    def handle_request(self, req: Any, conn: Connection) -> bool:
        """Serve one request in a thread (gunicorn's code); 100 Continue was the loop's job."""
        req._expected_100_continue = False  # answered by feed(), or the body had come anyway
        return super().handle_request(req, conn)

    def finish_request(self, conn: Connection, fs: Future[bool]) -> None:
        """A thread is done: read the next request on the loop, keep the connection, or close."""
        try:
            keep = not fs.cancelled() and bool(fs.result())
        except Exception:
            keep = False
        inbox, conn.inbox = conn.inbox, None
        if inbox is not None:
            # gunicorn must have read the request exactly as framed here, or where the next
            # request starts is not known: then the connection closes.
            keep = keep and inbox.is_read() and not conn.parser.unreader.buf.getvalue()
            inbox.close()
        self.resume(conn, keep)

    def resume(self, conn: Connection, keep: bool) -> None:
        """After a response: read the next request on the loop, keep the connection, or close."""
        if not keep:
            self.linger(conn)
        elif conn.rest:
            rest, conn.rest = conn.rest, b""
            conn.sock.setblocking(False)  # the thread made it blocking
            self.start_reading(conn, rest)
        else:
            conn.sock.setblocking(False)
            conn.set_timeout()
            if not self.alive:
                conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
            self.keepalived_conns.append(conn)
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
            )

    # Refusals and closes: answered and drained on the loop, never by a thread.

    def refuse(self, conn: Connection, refusal: Refused) -> None:
        """Answer from the loop, then close without reading the rest of the request."""
        log.info(
            "%s %s %s: %d %s",
            conn.client[0] if isinstance(conn.client, tuple) else conn.client,
            conn.reader.method if conn.reader else "-",
            conn.reader.target if conn.reader else "-",
            refusal.status,
            refusal.reason,
        )
        if not conn.is_handshaking:
            # A few hundred bytes into the socket's buffer; if they do not fit, no answer.
            with contextlib.suppress(OSError):
                conn.sock.send(refusal.response())
        self.linger(conn)

    def linger(self, conn: Connection) -> None:
        """Close after the client has read the answer (RFC 9112 section 9.6), on the loop.

        Closing with unread request bytes makes the kernel send RST, which can destroy the
        answer before the client reads it: so the write side is shut and what still arrives is
        dropped, until the client closes or LINGER_SECONDS pass.
        """
        self.reading.discard(conn)
        if conn.reader is not None:
            conn.reader.inbox.close()
            conn.reader = None
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:  # closed by the thread already, or reset by the client
            self.drop(conn)
            return
        conn.linger_until = time.monotonic() + LINGER_SECONDS
        self.lingering.add(conn)
        self.watch(conn, self.on_lingering)

    def on_lingering(self, conn: Connection, _sock: Any = None) -> None:
        """Drop what a refused or finished client still sends; close when it is done."""
        try:
            while conn.sock.recv_into(self.recv_view):
                pass
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            pass
        self.drop(conn)

    def drop(self, conn: Connection) -> None:
        """Close a connection the loop owns (being read, or lingering)."""
        self.unwatch(conn)
        self.reading.discard(conn)
        self.lingering.discard(conn)
        if conn.reader is not None:
            conn.reader.inbox.close()
            conn.reader = None
        self.close(conn)

    def close(self, conn: Connection) -> None:
        """Close the socket and count the connection gone."""
        self.nr_conns -= 1
        conn.close()

    def watch(self, conn: Connection, callback: Callable[..., None]) -> None:
        """Call `callback` when the socket is readable."""
        if conn.is_registered:
            self.poller.modify(conn.sock, selectors.EVENT_READ, partial(callback, conn))
        else:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(callback, conn))
            conn.is_registered = True

    def unwatch(self, conn: Connection) -> None:
        """Stop watching the socket (a thread, or nobody, reads it now)."""
        if conn.is_registered:
            conn.is_registered = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)

    def murder_pending(self) -> None:
        """Each turn of the loop: 408 for requests past their deadline, close lingerers."""
        super().murder_pending()
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_SECONDS
        late = [(c, c.reader) for c in self.reading if c.reader and c.reader.deadline < now]
        for conn, reader in late:
            if not (reader.inbox.size or reader.pending):  # never said a word
                self.drop(conn)
                continue
            seconds = self.settings.request_timeout_seconds
            self.refuse(
                conn,
                Refused(
                    408,
                    f"Request Timeout: the request did not arrive within {seconds:g} s "
                    f"(REQUEST_TIMEOUT, plus 1 s per {MIN_UPLOAD_BYTES_PER_SECOND} bytes).",
                ),
            )
        for conn in [c for c in self.lingering if c.linger_until < now]:
            self.drop(conn)
