"""Stored files of public indexes answered on the worker's event loop, without a thread.

gunicorn's gthread worker hands every request from its event loop to a thread and back: two
thread switches, socket mode changes and a poller re-registration per request, more than all
of pyshelf's own work for a cached wheel (bench/PROFILE.md). BufferingWorker (app/http/serving.py)
has read each request whole on the loop already; for a plain GET or HEAD of a file or sidecar
that CachedFiles (app/http/files.py) would send, `LoopFiles` sends it right there: one indexed
read on a SQLite connection of the loop's own, the head, and os.sendfile() for what the socket
takes at once (a thread finishes a larger body). Anything else (a range, a revalidation, a
private index, a proxy's forwarded headers, TLS, PostgreSQL) goes to a thread as before: the
app's views and their access checks are unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from gunicorn import SERVER
from gunicorn.util import http_date

if TYPE_CHECKING:
    from concurrent.futures import Future

    from app.core.logs import RequestLog
    from app.http.files import CachedFiles, Stored
    from app.http.request_reader import RequestReader
    from app.http.serving import BufferingWorker, Connection

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
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # as app/core/logs.py accepts one


class LoopFiles:
    """Answers a complete request on the event loop when CachedFiles has it; else declines."""

    def __init__(self, worker: BufferingWorker) -> None:
        self.worker = worker
        app = worker.wsgi
        self.files: CachedFiles = app.extensions["pyshelf.cached_files"]
        self.request_log: RequestLog = app.wsgi_app
        self.prefix = worker.settings.script_name.rstrip("/")
        self.lookup = self.files.lookup.own_connection_reader(LOOKUP_BUSY_MS)
        self.date_second, self.date_text = 0, ""

    @classmethod
    def for_worker(cls, worker: BufferingWorker) -> LoopFiles | None:
        """The loop's sender when this set-up allows it: disk storage (that pyshelf sends, not
        nginx: ACCEL_REDIRECT_PREFIX), SQLite, plain HTTP."""
        from app.core.logs import RequestLog  # not at the top: see serving.init_app

        app = worker.wsgi
        files = app.extensions.get("pyshelf.cached_files")
        if files is None or files.local_path is None or files.accel_prefix or worker.cfg.is_ssl:
            return None
        if not isinstance(app.wsgi_app, RequestLog):
            return None
        sender = cls(worker)
        return sender if sender.lookup is not None else None

    def serve(self, conn: Connection, reader: RequestReader, rest: bytes) -> bool:
        """Send the stored file `reader` asks for and go on with the connection; False when a
        thread must answer (nothing has been sent then)."""
        if reader.method not in ("GET", "HEAD") or "/+f/" not in reader.target:
            return False
        fields = _fields(reader.fields)
        if fields is None or reader.version != "HTTP/1.1":
            return False
        if any(name in THREAD_FIELDS or name.startswith("x-forwarded-") for name in fields):
            return False
        path = reader.target
        if "?" in path or "%" in path or not path.startswith("/"):
            return False
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return False
            path = path[len(self.prefix) :]
        started = time.perf_counter()
        assert self.lookup is not None  # for_worker() made sure
        try:
            stored = self.files.open_stored(path, self.lookup)
        except Exception:  # a busy or broken database: the view will say what is wrong
            log.debug("stored file on the loop: lookup failed", exc_info=True)
            return False
        if stored is None:
            return False
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
        head = "".join(
            [
                "HTTP/1.1 200 OK\r\n",
                f"Server: {SERVER}\r\n",
                f"Date: {self._date()}\r\n",
                f"Connection: {'keep-alive' if keep else 'close'}\r\n",
                *(f"{name}: {value}\r\n" for name, value in stored.headers),
                f"X-Request-ID: {request_id}\r\n\r\n",
            ]
        ).encode("latin-1")
        environ = {
            "REQUEST_METHOD": reader.method,
            "RAW_URI": reader.target,
            "SCRIPT_NAME": self.prefix,
            "PATH_INFO": path,
            "SERVER_PROTOCOL": reader.version,
            "REMOTE_ADDR": conn.client[0] if isinstance(conn.client, tuple) else "",
            "HTTP_USER_AGENT": fields.get("user-agent", "-"),
            "pyshelf.request_id": request_id,
            "pyshelf.route_kind": stored.route_kind,
            "pyshelf.cache_hit": stored.is_mirror_hit,
        }
        conn.rest = rest
        body_bytes = 0 if reader.method == "HEAD" else stored.size
        sent, offset = self._send_now(conn, stored, head, body_bytes)
        if sent < 0:  # the client is gone
            self._finish(conn, stored, environ, started, 0, keep=False)
        elif sent == len(head) and offset == body_bytes:
            self._finish(conn, stored, environ, started, body_bytes, keep=keep)
        else:  # the socket is full: a thread blocks on the rest, as it would have on all of it
            future = worker.tpool.submit(_send_rest, conn, stored, head[sent:], offset, body_bytes)

            def done(finished: Future[bool]) -> None:
                is_sent = not finished.cancelled() and finished.exception() is None
                is_sent = is_sent and bool(finished.result())
                sent_bytes = body_bytes if is_sent else offset
                worker.method_queue.defer(
                    self._finish, conn, stored, environ, started, sent_bytes, keep and is_sent
                )

            future.add_done_callback(done)
        return True

    def _date(self) -> str:
        """The Date header's value (RFC 9110 section 6.6.1), formatted once a second."""
        now = int(time.time())
        if now != self.date_second:
            self.date_second, self.date_text = now, http_date(now)
        return self.date_text

    def _send_now(
        self, conn: Connection, stored: Stored, head: bytes, body_bytes: int
    ) -> tuple[int, int]:
        """What the non-blocking socket takes now: (head bytes, body bytes), (-1, 0) on error."""
        try:
            sent = conn.sock.send(head)
        except BlockingIOError:
            return 0, 0
        except OSError:
            return -1, 0
        offset = 0
        if sent < len(head):
            return sent, 0
        out_fd, in_fd = conn.sock.fileno(), stored.source.fileno()
        while offset < body_bytes:
            try:
                count = os.sendfile(out_fd, in_fd, offset, body_bytes - offset)
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
        stored: Stored,
        environ: dict[str, Any],
        started: float,
        sent_bytes: int,
        keep: bool,
    ) -> None:
        """Back on the loop with all sent (or not): count it as RequestLog would, then keep the
        connection for its next request or close it."""
        stored.source.close()
        log.debug("sent on the event loop: %s %s", environ["REQUEST_METHOD"], environ["RAW_URI"])
        self.request_log.finish(environ, 200, sent_bytes, started)
        if stored.is_mirror_hit:  # may write the counters to the database: not on the loop
            self.worker.tpool.submit(self.files.note, stored)
        self.worker.resume(conn, keep)


def _send_rest(conn: Connection, stored: Stored, head: bytes, offset: int, body_bytes: int) -> bool:
    """In a thread: the rest of the head and of the file, blocking (gthread's way)."""
    try:
        conn.sock.setblocking(True)
        if head:
            conn.sock.sendall(head)
        if offset < body_bytes:
            conn.sock.sendfile(stored.source, offset, body_bytes - offset)
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
