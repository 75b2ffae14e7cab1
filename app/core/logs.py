"""Logging: text or JSON lines on stderr, a request id on every line, one line per request.

`RequestLog` is WSGI middleware: it gives each request an id (a sane incoming `X-Request-ID`
from a proxy, else a new one), answers it in the `X-Request-ID` header, and when the response
has been sent, streaming included, logs one line and tells its observers (metrics.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from app.core.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
TEXT_FORMAT = "[pyshelf] %(levelname)s %(name)s: %(message)s"
_INCOMING_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # nothing that could forge a log line
# A User-Agent is products and comments (RFC 9110 section 10.1.5); a product is a token with an
# optional "/version". Text lines keep the first product: pip's agent adds ~700 characters of
# JSON about the machine after "pip/24.0". Browsers all start with "Mozilla/5.0": theirs is
# the product that names them.
_PRODUCT_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:/[!#$%&'*+.^_`|~0-9A-Za-z-]+)?")
# Most specific first: Edge and Opera also say Chrome and Safari, Chrome also says Safari.
_BROWSER_RES = [
    re.compile(rf"\b[A-Za-z]*{name}/[0-9A-Za-z.]+")
    for name in ("Edg", "OPR", "Firefox", "Chrome", "Safari")
]
AGENT_MAX_CHARS = 64
# LogRecord attributes that JSON lines leave out (they say nothing, or say it twice).
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
}

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pyshelf_request_id", default=None
)
log = logging.getLogger("pyshelf.request")
_base_factory = logging.getLogRecordFactory()


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record carries the current request id (None outside a request)."""
    record = _base_factory(*args, **kwargs)
    record.request_id = request_id_var.get()
    return record


def install_record_factory() -> None:
    """Make every log record carry `request_id`; idempotent."""
    if logging.getLogRecordFactory() is not _record_factory:
        logging.setLogRecordFactory(_record_factory)


def utc_time(record: logging.LogRecord) -> str:
    """When the record was made: ISO 8601 in UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


def short_user_agent(agent: str) -> str:
    """The client's name and version from a User-Agent ("pip/24.0", "Firefox/128.0"), or "-"."""
    agent = agent.strip()
    first = _PRODUCT_RE.match(agent)
    if first is None:
        return "-"
    product = first.group()
    if product.startswith("Mozilla/"):
        browsers = (found for pattern in _BROWSER_RES if (found := pattern.search(agent)))
        product = next(browsers, first).group()
    return product[:AGENT_MAX_CHARS]


class TextFormatter(logging.Formatter):
    """`TIME [pyshelf] LEVEL logger: message` (TIME in ISO 8601 UTC), with ` rid=ID` appended
    inside a request."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = f"{utc_time(record)} {super().format(record)}"
        request_id = getattr(record, "request_id", None)
        return f"{text} rid={request_id}" if request_id else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(settings: Settings, text_format: str = TEXT_FORMAT) -> logging.Formatter:
    """The formatter LOG_FORMAT asks for."""
    return JsonFormatter() if settings.log_format == "json" else TextFormatter(text_format)


def configure(settings: Settings, text_format: str = TEXT_FORMAT) -> None:
    """Log to stderr at LOG_LEVEL in LOG_FORMAT, unless someone (gunicorn, pytest) already does."""
    install_record_factory()
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings, text_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level)


@dataclass
class Finished:
    """What observers learn about a request once its response has been sent."""

    environ: WSGIEnvironment
    status: int
    bytes_sent: int
    seconds: float


Observer = Callable[[Finished], None]


class RequestLog:
    """WSGI middleware: request id, one log line per request, observers told at the end (and
    arrivals at the start)."""

    def __init__(self, wsgi_app: WSGIApplication, *, access_log: bool = True) -> None:
        self.wsgi_app = wsgi_app
        self.access_log = access_log
        self.observers: list[Observer] = []
        self.arrivals: list[Callable[[], None]] = []  # told when a request comes in

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        for arrival in self.arrivals:
            arrival()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _INCOMING_ID_RE.match(incoming) else secrets.token_hex(8)
        environ["pyshelf.request_id"] = request_id
        token = request_id_var.set(request_id)
        state: dict[str, Any] = {"status": 500, "length": None}

        def _start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            state["status"] = int(status.split(" ", 1)[0])
            for name, value in headers:
                if name.lower() == "content-length" and value.isdigit():
                    state["length"] = int(value)
            headers = [h for h in headers if h[0].lower() != REQUEST_ID_HEADER.lower()]
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, *exc)

        try:
            result = self.wsgi_app(environ, _start_response)
        except BaseException:
            self.finish(environ, state["status"], 0, started)
            request_id_var.reset(token)
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            # gunicorn sendfile()s a file wrapper only when it gets that very object back: keep
            # it, and hear about the end through its close().
            inner_close = getattr(result, "close", None)

            def close() -> None:
                try:
                    if inner_close is not None:
                        inner_close()
                finally:
                    method_head = environ.get("REQUEST_METHOD") == "HEAD"
                    sent = 0 if method_head else (state["length"] or 0)
                    self.finish(environ, state["status"], sent, started)

            # the server's file wrapper (PEP 3333) has close(); mypy knows its class only as `type`
            result.close = close  # type: ignore[attr-defined]
            request_id_var.reset(token)
            return result
        request_id_var.reset(token)
        return _Body(
            result,
            request_id,
            lambda sent, ended: self.finish(environ, state["status"], sent, started, ended),
        )

    def finish(
        self,
        environ: WSGIEnvironment,
        status: int,
        sent: int,
        started: float,
        ended: float | None = None,
    ) -> None:
        """Tell the observers and log the line (also for answers sent without the app). The
        duration ends at `ended` (the last byte handed to the server) when given, so work the
        app does in its body's close() after that (search indexing) is not counted."""
        duration = (time.perf_counter() if ended is None else ended) - started
        finished = Finished(environ, status, sent, duration)
        for observer in self.observers:
            try:
                observer(finished)
            except Exception:  # metrics must never break a response
                logging.getLogger(__name__).exception("request observer failed")
        if self.access_log:
            _log_request(finished)


class _Body:
    """The response body, counted as it goes; `close()` (which every WSGI server calls, even for
    a body never iterated) closes the app's body and then reports the request as finished, timed
    to when its last byte went to the server (or to the close, for a body not read to its end)."""

    def __init__(
        self,
        result: Iterable[bytes],
        request_id: str,
        on_close: Callable[[int, float | None], None],
    ) -> None:
        self.result = result
        self.request_id = request_id
        self.on_close = on_close
        self.sent = 0
        self.ended: float | None = None
        self.closed = False
        self.token: contextvars.Token[str | None] | None = None

    def __iter__(self) -> Iterator[bytes]:
        # Lines logged while the body streams (a mirror download failing) carry the id too.
        self.token = request_id_var.set(self.request_id)
        for chunk in self.result:
            self.sent += len(chunk)
            yield chunk
        self.ended = time.perf_counter()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        close = getattr(self.result, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self.on_close(self.sent, self.ended)
            if self.token is not None:
                with contextlib.suppress(ValueError):  # closed from another context
                    request_id_var.reset(self.token)


def _request_line(environ: WSGIEnvironment) -> str:
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not uri:
        uri = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            uri += "?" + environ["QUERY_STRING"]
    method = environ.get("REQUEST_METHOD", "-")
    return f"{method} {uri} {environ.get('SERVER_PROTOCOL', 'HTTP/1.1')}"


def _log_request(finished: Finished) -> None:
    """One line per request, shaped like gunicorn's access log (which this replaces): status,
    bytes sent and duration; the message names the client, the `user_agent` field has it all."""
    environ = finished.environ
    remote = environ.get("REMOTE_ADDR") or "-"
    agent = environ.get("HTTP_USER_AGENT", "-")
    request_id = environ.get("pyshelf.request_id")
    line = _request_line(environ)
    milliseconds = round(finished.seconds * 1000, 1)
    # The request id of a streamed response's line comes from the environ: by the time the
    # last byte is out, the id may no longer be the thread's current one.
    previous = request_id_var.set(request_id)
    # The supply-chain rule that changed the answer (a refused file, files left off a page)
    # ends the line, with what decided it (app/http/metrics.py mark_guard).
    guard = environ.get("pyshelf.guard")
    detail = environ.get("pyshelf.guard_detail")
    try:
        log.info(
            '%s "%s" %s %s %sms "%s"%s%s',
            remote,
            line,
            finished.status,
            finished.bytes_sent,
            milliseconds,
            short_user_agent(agent),
            f" guard={guard}" if guard else "",
            f' guard_detail="{detail}"' if detail else "",
            extra={
                "remote_addr": remote,
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                "status": finished.status,
                "bytes": finished.bytes_sent,
                "duration_ms": milliseconds,
                "user_agent": agent,
                "route": environ.get("pyshelf.route_kind", "other"),
                **({"guard": guard} if guard else {}),
                **({"guard_detail": detail} if detail else {}),
            },
        )
    finally:
        request_id_var.reset(previous)
