"""How requests come in: the gunicorn worker that reads requests before serving, and the body
limits in the app (reading one request, and each route's limit: app/http/request_reader.py).

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
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from gunicorn import http
from gunicorn import sock as gunicorn_sock
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from app.http.request_reader import (
    MIN_UPLOAD_BYTES_PER_SECOND,
    Inbox,
    NeedsRoom,
    Refused,
    RequestReader,
    body_limit,
    too_large,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from flask import Flask

    from app.core.config import Settings

log = logging.getLogger(__name__)

RECV_BYTES = 1 << 20  # 1 MiB per recv_into(), into one buffer per worker: big bodies, few calls
LINGER_SECONDS = 5.0  # a refused client's time to read the answer before the socket closes
SWEEP_SECONDS = 0.5  # how often deadlines are checked
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
        from app.http.loop import LoopAnswers  # not at the top: see init_app

        self.loop_answers = LoopAnswers.for_worker(self)
        indexer = self.wsgi.extensions.get("pyshelf.indexer")
        if indexer is not None:
            indexer.start()  # search indexing while this worker is idle
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
        # A stored file or page of a public index: sent from here, no thread (app/http/loop.py).
        loop = self.loop_answers if reader.is_framed and not reader.body_bytes else None
        if loop is not None and loop.serve(conn, reader, rest):
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
