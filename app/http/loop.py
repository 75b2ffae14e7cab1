"""Stored files and pages of public indexes answered on the worker's event loop, without a thread.

gunicorn's gthread worker hands every request from its event loop to a thread and back: two
thread switches, socket mode changes and a poller re-registration per request, more than all
of pyshelf's own work for a cached wheel or a stored page (bench/PROFILE.md). BufferingWorker
(app/http/serving.py) has read each request whole on the loop already; for a plain GET or HEAD
of a file or sidecar that CachedFiles (app/http/files.py) would send, or of a project page that
CachedPages (app/http/stored_pages.py) would answer from the page cache, `LoopAnswers` answers right
there, with their own code: one indexed read on a SQLite connection of the loop's own, the head,
then the page's bytes, or os.sendfile() for what the socket takes of a file at once (a thread
sends the rest of a larger body). Anything else (a range, a revalidation of a file, a private
index, a page due for a check, a query string, a proxy's forwarded headers, TLS, PostgreSQL)
goes to a thread as before: the app's views and their access checks are unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO

from gunicorn import SERVER
from gunicorn.util import http_date

if TYPE_CHECKING:
    from concurrent.futures import Future

    from app.core.logs import RequestLog
    from app.data.db import OwnConnection
    from app.http.files import CachedFiles
    from app.http.request_reader import RequestReader
    from app.http.serving import BufferingWorker, Connection
    from app.http.stored_pages import CachedPages

log = logging.getLogger(__name__)

LOOKUP_BUSY_MS = 50  # the loop waits at most this long for a SQLite lock, then a thread answers
# A header field as RFC 9110 section 5 writes it, printable ASCII only: anything else is
# gunicorn's to judge, in a thread.
FIELD_RE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*")
# Fields that change the answer or who asked: a thread answers those (ranges and revalidations
# by werkzeug's rules; a proxy's forwarded scheme and prefix as ProxyFix reads them).
THREAD_FIELDS = frozenset(
    {
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "content-length",
        "transfer-encoding",
        "expect",
        "upgrade",
        "forwarded",
    }
)
# A page's revalidation is CachedPages' own (304 from the stored ETag): the loop answers it too.
PAGE_THREAD_FIELDS = THREAD_FIELDS - {"if-none-match"}
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # as app/core/logs.py accepts one
# The request's fields CachedPages reads, by the WSGI keys it reads them under.
PAGE_FIELDS = {
    "accept": "HTTP_ACCEPT",
    "accept-encoding": "HTTP_ACCEPT_ENCODING",
    "if-none-match": "HTTP_IF_NONE_MATCH",
}


@dataclass
class Answer:
    """What the loop sends: a status line, headers, then `body`, or `size` bytes of `source`."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes = b""  # a page's (nothing for a HEAD)
    source: BinaryIO | None = None  # a file's, sent with os.sendfile; closed when done
    size: int = 0  # of `source` to send (0 for a HEAD)
    after: Callable[[], None] | None = None  # a thread's work once it is sent (counters)


class LoopAnswers:
    """Answers a complete request on the event loop when CachedFiles or CachedPages has it;
    else declines."""

    def __init__(self, worker: BufferingWorker, own: OwnConnection) -> None:
        self.worker = worker
        app = worker.wsgi
        self.files: CachedFiles = app.extensions["pyshelf.cached_files"]
        self.pages: CachedPages = app.extensions["pyshelf.cached_pages"]
        self.request_log: RequestLog = app.wsgi_app
        self.prefix = worker.settings.script_name.rstrip("/")
        self.own = own
        self.file_lookup = partial(own.one, self.files.lookup)
        self.date_second, self.date_text = 0, ""

    @classmethod
    def for_worker(cls, worker: BufferingWorker) -> LoopAnswers | None:
        """The loop's answerer when this set-up allows it: disk storage (that pyshelf sends, not
        nginx: ACCEL_REDIRECT_PREFIX), SQLite, plain HTTP."""
        from app.core.logs import RequestLog  # not at the top: see serving.init_app
        from app.data.db import OwnConnection

        app = worker.wsgi
        files = app.extensions.get("pyshelf.cached_files")
        if files is None or files.local_path is None or files.accel_prefix or worker.cfg.is_ssl:
            return None
        if "pyshelf.cached_pages" not in app.extensions:
            return None
        if not isinstance(app.wsgi_app, RequestLog):
            return None
        own = OwnConnection.for_database(app.extensions["pyshelf.db"], LOOKUP_BUSY_MS)
        return None if own is None else cls(worker, own)

    def serve(self, conn: Connection, reader: RequestReader, rest: bytes) -> bool:
        """Answer the stored file or page `reader` asks for and go on with the connection; False
        when a thread must answer (nothing has been sent then)."""
        target = reader.target
        if reader.method not in ("GET", "HEAD") or reader.version != "HTTP/1.1":
            return False
        is_file = "/+f/" in target
        if not is_file and "/+simple/" not in target:
            return False
        if "?" in target or "%" in target or not target.startswith("/"):
            return False
        fields = _fields(reader.fields)
        if fields is None:
            return False
        thread_fields = THREAD_FIELDS if is_file else PAGE_THREAD_FIELDS
        # gunicorn judges a name with "_" by header_map and its forwarders (SCRIPT_NAME from a
        # trusted proxy changes the prefix): a thread's.
        if any(
            name in thread_fields or name.startswith("x-forwarded-") or "_" in name
            for name in fields
        ):
            return False
        path = target
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return False
            path = path[len(self.prefix) :]
        started = time.perf_counter()
        environ = {
            "REQUEST_METHOD": reader.method,
            "RAW_URI": target,
            "SCRIPT_NAME": self.prefix,
            "PATH_INFO": path,
            "SERVER_PROTOCOL": reader.version,
            "REMOTE_ADDR": conn.client[0] if isinstance(conn.client, tuple) else "",
            "HTTP_USER_AGENT": fields.get("user-agent", "-"),
        }
        try:
            answer = self._file(environ) if is_file else self._page(environ, fields)
        except Exception:  # a busy or broken database: the view will say what is wrong
            log.debug("answer on the loop: lookup failed", exc_info=True)
            return False
        if answer is None:
            return False
        self._send(conn, answer, environ, fields, rest, started)
        return True

    def _file(self, environ: dict[str, Any]) -> Answer | None:
        """A stored file or sidecar, as CachedFiles sends it."""
        stored = self.files.open_stored(environ["PATH_INFO"], self.file_lookup)
        if stored is None:
            return None
        environ["pyshelf.route_kind"] = stored.route_kind
        environ["pyshelf.cache_hit"] = stored.is_mirror_hit
        after = partial(self.files.note, stored) if stored.is_mirror_hit else None
        size = 0 if environ["REQUEST_METHOD"] == "HEAD" else stored.size
        return Answer("200 OK", stored.headers, source=stored.source, size=size, after=after)

    def _page(self, environ: dict[str, Any], fields: dict[str, str]) -> Answer | None:
        """A stored public project page, as CachedPages answers it."""
        for name, key in PAGE_FIELDS.items():
            if name in fields:
                environ[key] = fields[name]
        page = self.pages.stored(environ, self.own)
        if page is None:
            return None
        environ["pyshelf.route_kind"] = "simple"
        body = b"" if environ["REQUEST_METHOD"] == "HEAD" else page.body
        return Answer(page.status, page.headers, body=body)

    def _send(
        self,
        conn: Connection,
        answer: Answer,
        environ: dict[str, Any],
        fields: dict[str, str],
        rest: bytes,
        started: float,
    ) -> None:
        """Send the answer: what the socket takes now from here, the rest from a thread."""
        worker = self.worker
        keep = "close" not in fields.get("connection", "").lower()
        worker.nr += 1
        if worker.nr >= worker.max_requests:
            if worker.alive:
                log.info("Autorestarting worker after current request.")
            worker.alive = False
        is_full = len(worker.keepalived_conns) >= worker.max_keepalived
        keep = keep and worker.alive and bool(worker.cfg.keepalive) and not is_full
        incoming = fields.get("x-request-id", "")
        request_id = incoming if REQUEST_ID_RE.match(incoming) else secrets.token_hex(8)
        environ["pyshelf.request_id"] = request_id
        head = "".join(
            [
                f"HTTP/1.1 {answer.status}\r\n",
                f"Server: {SERVER}\r\n",
                f"Date: {self._date()}\r\n",
                f"Connection: {'keep-alive' if keep else 'close'}\r\n",
                *(f"{name}: {value}\r\n" for name, value in answer.headers),
                f"X-Request-ID: {request_id}\r\n\r\n",
            ]
        ).encode("latin-1")
        status = int(answer.status[:3])
        conn.rest = rest
        data = head + answer.body if answer.body else head
        body_bytes = len(answer.body) + answer.size
        sent, offset = self._send_now(conn, answer, data)
        if sent < 0:  # the client is gone
            self._finish(conn, answer, environ, status, started, 0, keep=False)
        elif sent == len(data) and offset == answer.size:
            self._finish(conn, answer, environ, status, started, body_bytes, keep=keep)
        else:  # the socket is full: a thread blocks on the rest, as it would have on all of it
            future = worker.tpool.submit(_send_rest, conn, answer, data[sent:], offset)

            def done(finished: Future[bool]) -> None:
                is_sent = not finished.cancelled() and finished.exception() is None
                is_sent = is_sent and bool(finished.result())
                sent_bytes = body_bytes if is_sent else max(0, sent - len(head)) + offset
                worker.method_queue.defer(
                    self._finish,
                    conn,
                    answer,
                    environ,
                    status,
                    started,
                    sent_bytes,
                    keep and is_sent,
                )

            future.add_done_callback(done)

    def _date(self) -> str:
        """The Date header's value (RFC 9110 section 6.6.1), formatted once a second."""
        now = int(time.time())
        if now != self.date_second:
            self.date_second, self.date_text = now, http_date(now)
        return self.date_text

    def _send_now(self, conn: Connection, answer: Answer, data: bytes) -> tuple[int, int]:
        """What the non-blocking socket takes now: (bytes of `data`, bytes of the file), (-1, 0)
        on error."""
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            return 0, 0
        except OSError:
            return -1, 0
        offset = 0
        if sent < len(data) or answer.source is None:
            return sent, 0
        out_fd, in_fd = conn.sock.fileno(), answer.source.fileno()
        while offset < answer.size:
            try:
                count = os.sendfile(out_fd, in_fd, offset, answer.size - offset)
            except BlockingIOError:
                break
            except OSError:
                return -1, 0
            if not count:  # the blob is shorter than it was a moment ago: never pad it
                return -1, 0
            offset += count
        return sent, offset

    def _finish(
        self,
        conn: Connection,
        answer: Answer,
        environ: dict[str, Any],
        status: int,
        started: float,
        sent_bytes: int,
        keep: bool,
    ) -> None:
        """Back on the loop with all sent (or not): count it as RequestLog would, then keep the
        connection for its next request or close it."""
        if answer.source is not None:
            answer.source.close()
        log.debug(
            "sent on the event loop: %s %s (%s)",
            environ["REQUEST_METHOD"],
            environ["RAW_URI"],
            environ["pyshelf.request_id"],
        )
        self.request_log.finish(environ, status, sent_bytes, started)
        if answer.after is not None:  # may write the counters to the database: not on the loop
            self.worker.tpool.submit(answer.after)
        self.worker.resume(conn, keep)


def _send_rest(conn: Connection, answer: Answer, data: bytes, offset: int) -> bool:
    """In a thread: the rest of the head (and page), then of the file, blocking (gthread's way)."""
    try:
        conn.sock.setblocking(True)
        if data:
            conn.sock.sendall(data)
        if answer.source is not None and offset < answer.size:
            conn.sock.sendfile(answer.source, offset, answer.size - offset)
    except OSError:
        return False
    return True


def _fields(text: str) -> dict[str, str] | None:
    """The header fields by lowercase name; None when one is odd or repeated (a thread's)."""
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line:
            continue
        match = FIELD_RE.fullmatch(line)
        if match is None:
            return None
        name = match[1].lower()
        if name in fields:
            return None
        fields[name] = match[2]
    return fields
