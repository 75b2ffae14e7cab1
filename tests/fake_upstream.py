"""A fake upstream simple index on 127.0.0.1: plays PyPI, counts requests, fails on demand."""

from __future__ import annotations

import base64
import collections
import contextlib
import email.utils
import gzip
import hashlib
import html
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

MIME_JSON = "application/vnd.pypi.simple.v1+json"
MIME_PROVENANCE = "application/vnd.pypi.integrity.v1+json"  # PEP 740
PROVENANCE_SUFFIX = ".provenance"  # where this fake serves a file's provenance object
MIME_HTML = "application/vnd.pypi.simple.v1+html"
MIME_TEXT_HTML = "text/html"
OFFERS = (MIME_TEXT_HTML, MIME_HTML, MIME_JSON)  # ties go to the first, as on PyPI (PEP 691)
ALIASES = {  # PEP 691: the meta-versions name the latest concrete one
    "application/vnd.pypi.simple.latest+json": MIME_JSON,
    "application/vnd.pypi.simple.latest+html": MIME_HTML,
}
API_VERSION = "1.4"
FAULT_MODES = (None, "503", "reset")
MAX_DELAY_SECONDS = 30.0  # delay_seconds is capped so a forgotten setting cannot hang a run
SOCKET_TIMEOUT_SECONDS = 5.0  # an idle client cannot hold a handler thread longer than this
WRITES_PER_SECOND = 20  # throttled files go out in this many slices a second

_NORMALIZE = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """PEP 503 normalization."""
    return _NORMALIZE.sub("-", name).lower()


def negotiate(accept: str | None) -> str:
    """Pick a page type for an Accept header: highest q wins, ties by PyPI's order (PEP 691)."""
    if accept is None or not accept.strip():
        return OFFERS[0]
    ranges: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, *parameters = item.split(";")
        media = media.strip().lower()
        if not media:
            continue
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        ranges.append((ALIASES.get(media, media), quality))
    best, best_quality = OFFERS[0], 0.0
    for offer in OFFERS:
        quality = _quality(offer, ranges)
        if quality > best_quality:
            best, best_quality = offer, quality
    return best  # nothing acceptable: text/html anyway, as PyPI (PEP 691)


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    """The q of the most specific range matching `offer` (RFC 9110 §12.5.1)."""
    offer_type = offer.split("/", 1)[0]
    specificity, quality = -1, 0.0
    for media, media_quality in ranges:
        if media == offer:
            rank = 2
        elif media == f"{offer_type}/*":
            rank = 1
        elif media == "*/*":
            rank = 0
        else:
            continue
        if rank > specificity:
            specificity, quality = rank, media_quality
    return quality


def _accepts_gzip(accept_encoding: str | None) -> bool:
    for item in (accept_encoding or "").split(","):
        coding, *parameters = item.split(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q" and value.strip() in ("0", "0.0", "0.00", "0.000"):
                return False
        return True
    return False


@dataclass
class FakeFile:
    """One distribution registered with the fake."""

    project: str
    filename: str
    data: bytes
    requires_python: str | None = None
    yanked: bool | str = False
    upload_time: str | None = None
    metadata: bytes | None = None
    # What the pages claim instead of the real hashes: an attacker's upstream lists any sha256.
    listed_sha256: str | None = None
    listed_metadata_sha256: str | None = None
    provenance: bytes | None = None  # PEP 740's object, served at the file's URL + .provenance

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def metadata_sha256(self) -> str | None:
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None

    @property
    def page_sha256(self) -> str:
        """The sha256 the project pages list for the file."""
        return self.listed_sha256 or self.sha256

    @property
    def page_metadata_sha256(self) -> str | None:
        """The sha256 the project pages list for the file's sidecar."""
        return self.listed_metadata_sha256 or self.metadata_sha256

    @property
    def path(self) -> str:
        """The decoded URL path: what counters and the log show."""
        return f"/files/{self.sha256[:12]}/{self.filename}"

    @property
    def url_path(self) -> str:
        """The percent-encoded URL path, as links carry it."""
        return quote(self.path)

    @property
    def version(self) -> str:
        stem = re.sub(r"(\.tar\.gz|\.zip|\.tar\.bz2|\.whl|\.egg)$", "", self.filename)
        if self.filename.endswith(".whl"):
            return stem.split("-")[1] if stem.count("-") >= 1 else stem
        return stem.rpartition("-")[2]


@dataclass
class FakeProject:
    """A project: its display name, files, status and last change (for Last-Modified)."""

    name: str
    files: list[FakeFile] = field(default_factory=list)
    status: str | None = None
    status_reason: str | None = None
    modified_at: int = 0  # epoch seconds


class FakeUpstream:
    """A PyPI look-alike on 127.0.0.1:0 in a daemon thread; `url` is its simple index URL."""

    def __init__(self) -> None:
        self.mode: str | None = None  # None, "503" or "reset" (FAULT_MODES)
        self.mode_times: int | None = None  # fail only this many more requests, then recover
        self.delay_seconds: float = 0.0
        self.corrupt: set[str] = set()
        self.truncate: set[str] = set()
        self.html_only = False
        self.throttle_bytes_per_second: int | None = None
        self.basic_auth: tuple[str, str] | None = None
        self.gzip_when_accepted = True  # like a CDN; proves clients hash the raw bytes
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, dict[str, str]]] = []  # header names lower-cased
        self._projects: dict[str, FakeProject] = {}
        self._files: dict[str, FakeFile] = {}  # by URL path
        self._redirects: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Listen (on the same port as before after a stop) and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"fake-upstream-{self._port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection; returns promptly even mid-download."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The simple index URL, with its trailing slash."""
        return f"{self.base_url}/simple/"

    # --- content -------------------------------------------------------------------------

    def add_file(
        self,
        project_name: str,
        filename: str,
        data: bytes,
        *,
        requires_python: str | None = None,
        yanked: bool | str = False,
        upload_time: str | datetime | None = None,
        metadata: bytes | None = None,
        listed_sha256: str | None = None,
        listed_metadata_sha256: str | None = None,
        provenance: bytes | None = None,
    ) -> FakeFile:
        """Register a distribution (and its PEP 658 sidecar when `metadata` is given); pages
        list `listed_sha256` / `listed_metadata_sha256` instead of the real hashes if given."""
        if isinstance(upload_time, datetime):
            upload_time = upload_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        fake_file = FakeFile(
            project_name,
            filename,
            data,
            requires_python,
            yanked,
            upload_time,
            metadata,
            listed_sha256,
            listed_metadata_sha256,
            provenance,
        )
        with self._lock:
            project = self._projects.setdefault(normalize(project_name), FakeProject(project_name))
            for old in project.files:
                if old.filename == filename:
                    self._files.pop(old.path, None)
            project.files = [f for f in project.files if f.filename != filename] + [fake_file]
            project.modified_at = int(time.time())
            self._files[fake_file.path] = fake_file
        return fake_file

    def set_status(self, project_name: str, status: str | None, reason: str | None = None) -> None:
        """Set a project's PEP 792 status (None removes it)."""
        with self._lock:
            project = self._projects.setdefault(normalize(project_name), FakeProject(project_name))
            project.status, project.status_reason = status, reason
            project.modified_at = int(time.time())

    def add_redirect(self, path: str, location: str, status: int = 301) -> None:
        """Answer GET `path` with a redirect to `location` (a path or a URL)."""
        with self._lock:
            self._redirects[path] = (status, location)

    def file_url(self, filename: str) -> str:
        """The absolute URL a registered file is served at."""
        with self._lock:
            for fake_file in self._files.values():
                if fake_file.filename == filename:
                    return self.base_url + fake_file.url_path
        raise KeyError(filename)

    # --- faults and counters ---------------------------------------------------------

    @property
    def down(self) -> bool:
        """True while every request fails (see `mode`); setting it True means `mode = "503"`."""
        return self.mode is not None

    @down.setter
    def down(self, value: bool) -> None:
        self.mode = "503" if value else None

    def fail(self, mode: str | None, times: int | None = None) -> None:
        """Fail requests with `mode` ("503" or "reset"): all of them, or only the next `times`."""
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, not {mode!r}")
        with self._lock:
            self.mode, self.mode_times = mode, times

    @property
    def connections(self) -> int:
        """How many TCP connections clients opened to this upstream so far."""
        return self._server.accepted if self._server is not None else 0

    def count(self, prefix: str = "/") -> int:
        """How many requests had a path starting with `prefix`."""
        with self._lock:
            return sum(n for path, n in self.requests.items() if path.startswith(prefix))

    def headers_for(self, prefix: str) -> list[dict[str, str]]:
        """The (lower-cased) request headers of every request whose path starts with `prefix`."""
        with self._lock:
            return [headers for _, path, headers in self.log if path.startswith(prefix)]

    def reset_counts(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self.requests.clear()
            self.log.clear()

    # --- used by the handler ---------------------------------------------------------

    def _record(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        """Count the request; return the fault to apply to it, if any."""
        with self._lock:
            self.requests[path] += 1
            self.log.append((method, path, headers))
            mode = self.mode
            if mode is not None and self.mode_times is not None:
                self.mode_times -= 1
                if self.mode_times <= 0:
                    self.mode, self.mode_times = None, None
            return mode

    def _snapshot(self, normalized: str) -> FakeProject | None:
        with self._lock:
            project = self._projects.get(normalized)
            if project is None:
                return None
            return FakeProject(
                project.name,
                list(project.files),
                project.status,
                project.status_reason,
                project.modified_at,
            )

    def _project_names(self) -> list[str]:
        with self._lock:
            return sorted(p.name for p in self._projects.values())

    def _file(self, path: str) -> tuple[FakeFile, bool] | None:
        """The file at `path`, and whether the `.metadata` sidecar was asked for."""
        with self._lock:
            if path in self._files:
                return self._files[path], False
            found = self._files.get(path.removesuffix(".metadata"))
            if path.endswith(".metadata") and found is not None and found.metadata is not None:
                return found, True
        return None

    def _redirect(self, path: str) -> tuple[int, str] | None:
        with self._lock:
            return self._redirects.get(path)

    # --- rendering ---------------------------------------------------------------------

    def render_json(self, project: FakeProject) -> bytes:
        """The PEP 691 page, with absolute file URLs."""
        files = []
        for f in project.files:
            entry: dict[str, Any] = {
                "filename": f.filename,
                "url": self.base_url + f.url_path,
                "hashes": {"sha256": f.page_sha256},
                "requires-python": f.requires_python,
                "yanked": f.yanked,
                "size": len(f.data),
            }
            if f.upload_time is not None:
                entry["upload-time"] = f.upload_time
            metadata = {"sha256": f.page_metadata_sha256} if f.metadata is not None else False
            entry["core-metadata"] = metadata
            entry["data-dist-info-metadata"] = metadata  # what PyPI also sends
            if f.provenance is not None:
                entry["provenance"] = self.base_url + f.url_path + PROVENANCE_SUFFIX
            files.append(entry)
        document: dict[str, Any] = {
            "meta": {"api-version": API_VERSION, "_last-serial": 1},
            "name": normalize(project.name),
            "files": files,
            "versions": sorted({f.version for f in project.files}),
        }
        if project.status is not None:
            document["project-status"] = {"status": project.status}
            if project.status_reason:
                document["project-status"]["reason"] = project.status_reason
        return json.dumps(document).encode()

    def render_html(self, project: FakeProject) -> bytes:
        """The PEP 503 page as PyPI's template writes it, with relative file URLs."""
        name = html.escape(project.name)
        head = [f'    <meta name="pypi:repository-version" content="{API_VERSION}">']
        if project.status is not None:
            status = html.escape(project.status)
            head.append(f'    <meta name="pypi:project-status" content="{status}">')
            if project.status_reason:
                reason = html.escape(project.status_reason)
                head.append(f'    <meta name="pypi:project-status-reason" content="{reason}">')
        lines = [
            "<!DOCTYPE html>",
            "<html>",
            "  <head>",
            *head,
            f"    <title>Links for {name}</title>",
            "  </head>",
            "  <body>",
            f"    <h1>Links for {name}</h1>",
        ]
        for f in project.files:
            attributes = [f'href="../..{f.url_path}#sha256={f.page_sha256}"']
            if f.requires_python is not None:
                attributes.append(f'data-requires-python="{html.escape(f.requires_python)}"')
            if f.yanked is not False:
                reason = "" if f.yanked is True else html.escape(str(f.yanked))
                attributes.append(f'data-yanked="{reason}"')  # never valueless (PEP 592)
            if f.metadata is not None:
                attributes.append(f'data-dist-info-metadata="sha256={f.page_metadata_sha256}"')
                attributes.append(f'data-core-metadata="sha256={f.page_metadata_sha256}"')
            if f.provenance is not None:
                attributes.append(f'data-provenance="../..{f.url_path}{PROVENANCE_SUFFIX}"')
            lines.append(f"    <a {' '.join(attributes)}>{html.escape(f.filename)}</a><br />")
        lines += ["  </body>", "</html>", ""]
        return "\n".join(lines).encode()

    def render_index(self, mime: str) -> bytes:
        """The project list (pyshelf must never ask for it)."""
        names = self._project_names()
        if mime == MIME_JSON:
            projects = [{"name": n} for n in names]
            return json.dumps({"meta": {"api-version": API_VERSION}, "projects": projects}).encode()
        links = "".join(f'<a href="{normalize(n)}/">{html.escape(n)}</a>\n' for n in names)
        return f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close must not wait for handler threads
    allow_reuse_address = True  # restart on the same port after stop()
    fake: FakeUpstream

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.accepted = 0  # connections accepted so far

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
            self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real clients use it
    disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms ACK stall
    timeout = SOCKET_TIMEOUT_SECONDS
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, *, send_body: bool) -> None:
        fake = self.server.fake
        path = unquote(urlsplit(self.path).path)
        headers = {key.lower(): value for key, value in self.headers.items()}
        mode = fake._record(self.command, path, headers)
        try:
            if fake.delay_seconds > 0:
                fake._stopping.wait(min(fake.delay_seconds, MAX_DELAY_SECONDS))
            if fake._stopping.is_set():
                self.close_connection = True
                return
            if mode == "reset":
                self._reset()
                return
            if mode == "503":
                self._send(503, b"Service Unavailable\n", {"Retry-After": "1"}, send_body)
                return
            if fake.basic_auth is not None and not self._authorized(fake.basic_auth):
                extra = {"WWW-Authenticate": 'Basic realm="fake-upstream"'}
                self._send(401, b"Unauthorized\n", extra, send_body)
                return
            self._route(path, send_body)
        except OSError:  # the client went away (or stop() cut the connection)
            self.close_connection = True

    def _route(self, path: str, send_body: bool) -> None:
        fake = self.server.fake
        redirect = fake._redirect(path)
        if redirect is not None:
            status, location = redirect
            self._send(status, b"", {"Location": location}, send_body)
        elif path == "/simple/":
            mime = MIME_TEXT_HTML if fake.html_only else negotiate(self.headers.get("Accept"))
            self._send_page(fake.render_index(mime), mime, None, send_body)
        elif path.startswith("/simple/"):
            name = path.removeprefix("/simple/")
            if not name.endswith("/") or normalize(name.rstrip("/")) != name.rstrip("/"):
                location = f"/simple/{normalize(name.rstrip('/'))}/"
                self._send(301, b"", {"Location": location}, send_body)
                return
            project = fake._snapshot(name.rstrip("/"))
            if project is None:
                self._send(404, b"Not Found\n", {}, send_body)
                return
            mime = MIME_TEXT_HTML if fake.html_only else negotiate(self.headers.get("Accept"))
            body = fake.render_json(project) if mime == MIME_JSON else fake.render_html(project)
            self._send_page(body, mime, project.modified_at, send_body)
        elif path.endswith(PROVENANCE_SUFFIX):
            attested = fake._file(path.removesuffix(PROVENANCE_SUFFIX))
            if attested is None or attested[1] or attested[0].provenance is None:
                self._send(404, b"Not Found\n", {}, send_body)
            else:
                headers = {"Content-Type": MIME_PROVENANCE}
                self._send(200, attested[0].provenance, headers, send_body)
        else:
            found = fake._file(path)
            if found is None:
                self._send(404, b"Not Found\n", {}, send_body)
            else:
                self._send_file(*found, send_body=send_body)

    def _authorized(self, credentials: tuple[str, str]) -> bool:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        return self.headers.get("Authorization") == f"Basic {token}"

    def _reset(self) -> None:
        """Close the connection with a TCP reset and no response at all."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _send_page(self, body: bytes, mime: str, modified_at: int | None, send_body: bool) -> None:
        """A page with strong ETag, Last-Modified, Vary, and a 304 for a matching validator."""
        content_type = mime if mime == MIME_JSON else f"{mime}; charset=utf-8"
        encoded = self._gzip_wanted()
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}{"-gz" if encoded else ""}"'
        headers = {
            "Content-Type": content_type,
            "ETag": etag,
            "Vary": "Accept, Accept-Encoding",
            "Cache-Control": "max-age=600, public",
        }
        if modified_at is not None:
            headers["Last-Modified"] = email.utils.formatdate(modified_at, usegmt=True)
        if self._not_modified(etag, modified_at):
            self.send_response(304)
            for key, value in headers.items():
                if key != "Content-Type":
                    self.send_header(key, value)
            self.end_headers()
            return
        self._send(200, body, headers, send_body, compress=encoded)

    def _not_modified(self, etag: str, modified_at: int | None) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:  # RFC 9110 §13.1.2: weak comparison; it beats the date
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return "*" in tags or etag in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since and modified_at is not None:
            try:
                since = email.utils.parsedate_to_datetime(if_modified_since)
            except (TypeError, ValueError):
                return False
            return modified_at <= since.timestamp()
        return False

    def _send_file(self, fake_file: FakeFile, is_metadata: bool, *, send_body: bool) -> None:
        fake = self.server.fake
        body = (
            fake_file.metadata if is_metadata and fake_file.metadata is not None else fake_file.data
        )
        if not is_metadata and fake_file.filename in fake.corrupt and body:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        compress = self._gzip_wanted()
        if compress:
            body = gzip.compress(body, mtime=0)
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{fake_file.sha256}"'}
        if compress:
            headers["Content-Encoding"] = "gzip"
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        if not is_metadata and fake_file.filename in fake.truncate:
            self._write(body[: len(body) // 2])
            self.close_connection = True  # full Content-Length promised, half sent
            return
        self._write(body)

    def _write(self, data: bytes) -> None:
        """Write `data`, throttled when the fake says so; stops early when the fake stops."""
        fake = self.server.fake
        rate = fake.throttle_bytes_per_second
        if not rate:
            self.wfile.write(data)
            return
        slice_bytes = max(1, rate // WRITES_PER_SECOND)
        for start in range(0, len(data), slice_bytes):
            if fake._stopping.is_set():
                self.close_connection = True
                return
            self.wfile.write(data[start : start + slice_bytes])
            fake._stopping.wait(slice_bytes / rate)

    def _gzip_wanted(self) -> bool:
        fake = self.server.fake
        return fake.gzip_when_accepted and _accepts_gzip(self.headers.get("Accept-Encoding"))

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        send_body: bool,
        *,
        compress: bool = False,
    ) -> None:
        if compress and body:
            body = gzip.compress(body, mtime=0)
            headers = {**headers, "Content-Encoding": "gzip"}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)
