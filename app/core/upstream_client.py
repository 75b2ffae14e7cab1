"""HTTP client for an upstream simple index: fetches project pages and files, with timeouts,
retries and backoff, credentials from the URL, and every connection through the egress guard.

The pages it fetches are parsed by app/core/upstream_pages.py; the errors and entries it returns
are app/core/upstream.py's.
"""

from __future__ import annotations

import codecs
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
import urllib3
from requests.auth import HTTPBasicAuth

from app.core.egress import AddressGuard, AddressRefused, GuardedAdapter, parse_networks
from app.core.upstream import (
    MIME_HTML,
    MIME_JSON,
    MIME_TEXT_HTML,
    UpstreamError,
    UpstreamNotFound,
    UpstreamPage,
    UpstreamRefused,
    UpstreamTimeout,
    mask_url,
    url_origin,
)
from app.core.upstream_pages import parse_html_page, parse_json_page

if TYPE_CHECKING:
    from app.core.config import Settings

log = logging.getLogger(__name__)

# PEP 691: ask for JSON first, since only JSON carries size and upload-time (PEP 700).
ACCEPT_PAGE = f"{MIME_JSON}, {MIME_HTML};q=0.2, {MIME_TEXT_HTML};q=0.1"
USER_AGENT = f"pyshelf python-requests/{requests.__version__}"
MAX_PAGE_BYTES = 128 * 1024 * 1024  # 128 MiB: far above any real project page; bounds memory
CHUNK_BYTES = 64 * 1024
OK_STATUSES = (200, 203)  # 203: a transforming proxy's 200
NOT_FOUND_STATUSES = (404, 410)
MAX_ETAG_CHARS = 255  # MirrorPage.etag
MAX_WHAT_CHARS = 160  # keeps str(UpstreamError) fit for a status line (errors.clean_reason)
MAX_REDIRECTS = 10  # requests' default of 30 is far more than a file host or CDN chain needs
# Idle connections kept per upstream host and worker: above gunicorn's threads, so that no
# thread's connection is dropped for want of room (urllib3 warns when it must)
POOL_CONNECTIONS = 64

_NAME_SEPARATORS = re.compile(r"[-_.]+")  # PEP 503 normalization
_VALID_NORMALIZED_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")

T = TypeVar("T")


class UpstreamClient:
    """Fetches project pages and files from upstream simple indexes over HTTP(S)."""

    def __init__(
        self,
        *,
        connect_timeout_seconds: float = 10,
        read_timeout_seconds: float = 30,
        retries: int = 2,
        backoff_seconds: float = 0.5,
        ca_bundle: str | None = None,
        session_factory: Callable[[], requests.Session] | None = None,
        allow_private: Sequence[str] = (),
        trusted_url: str | None = None,
        file_hosts: Sequence[str] = (),
    ) -> None:
        """`allow_private`: networks reachable although not public (UPSTREAM_ALLOW_PRIVATE);
        `trusted_url`: the operator's MIRROR_URL, whose host:port requests made for that very
        index URL reach whatever it resolves to; `file_hosts`: when given, the only hosts besides
        the index's own that file links may point at (MIRROR_FILE_HOSTS)."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        self.connect_timeout_seconds = connect_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.ca_bundle = ca_bundle
        self._session_factory = session_factory or requests.Session
        self._guard = AddressGuard(allowed=parse_networks(allow_private))
        self.trusted_url = trusted_url
        origin = url_origin(trusted_url or "")
        self._trusted_guard = AddressGuard(
            allowed=self._guard.allowed,
            trusted=frozenset({origin[1:]} if origin else ()),
        )
        self.file_hosts = frozenset(host.strip().lower() for host in file_hosts if host.strip())
        # One session per thread (a Session's cookies and settings are not thread-safe), all of
        # them on one transport per kind, whose urllib3 pools are: a thread reuses a connection
        # another thread of this worker opened (one TLS handshake per host, not per thread).
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._adapters: dict[bool, GuardedAdapter] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamClient:
        """The client the server and its commands use, as the environment configures it."""
        return cls(
            connect_timeout_seconds=settings.upstream_connect_timeout_seconds,
            read_timeout_seconds=settings.upstream_read_timeout_seconds,
            retries=settings.upstream_retries,
            ca_bundle=settings.upstream_ca_bundle,
            allow_private=settings.upstream_allow_private,
            trusted_url=settings.mirror_url,
            file_hosts=settings.mirror_file_hosts,
        )

    def fetch_project(
        self,
        simple_url: str,
        normalized_name: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> UpstreamPage | None:
        """Fetch and parse one project page; None when the upstream says 304 Not Modified."""
        if _NAME_SEPARATORS.sub("-", normalized_name).lower() != normalized_name:
            raise ValueError(f"not a normalized project name: {normalized_name!r}")
        try:
            parts = urlsplit(simple_url)
        except ValueError:
            display = mask_url(simple_url)
            raise UpstreamError(f"{display}: invalid URL", url=display) from None
        path = f"{parts.path.rstrip('/')}/{normalized_name}/"
        full_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        display = mask_url(full_url)
        if not _VALID_NORMALIZED_NAME.fullmatch(normalized_name):
            # e.g. "-foo" from a request for "_foo": no project can have it, so 404.
            raise UpstreamNotFound(f"{display}: not a valid project name", url=display)
        url, credentials = _split_credentials(full_url)
        _require_http(url, display)
        headers = {"Accept": ACCEPT_PAGE}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        is_conditional = bool(etag or last_modified)
        is_trusted = simple_url == self.trusted_url

        def attempt() -> UpstreamPage | None:
            with self._get(url, headers, credentials, is_trusted=is_trusted) as response:
                if response.status_code == 304 and is_conditional:
                    return None
                _check_status(response, display)
                content_type = response.headers.get("Content-Type", "")
                kind = _page_kind(content_type)
                if kind is None:
                    raise UpstreamError(
                        f"{display}: unsupported Content-Type {content_type[:60]!r}", url=display
                    )
                body = _read_page(response, display)
                final_url = response.url
                # Validators longer than their columns (PostgreSQL enforces VARCHAR sizes)
                # are dropped: the page is then simply fetched in full next time.
                page_etag = _fits(response.headers.get("ETag"), MAX_ETAG_CHARS)
                page_last_modified = _fits(response.headers.get("Last-Modified"), 64)
            if kind == "json":
                parsed = parse_json_page(body, final_url, normalized_name)
            else:
                text = body.decode(_charset(content_type), errors="replace")
                parsed = parse_html_page(text, final_url, normalized_name)
            return UpstreamPage(
                name=parsed.name,
                files=parsed.files,
                etag=page_etag,
                last_modified=page_last_modified,
                status=parsed.status,
                status_reason=parsed.status_reason,
            )

        return self._with_retries(attempt, display)

    def open_file(self, url: str, *, simple_url: str | None = None) -> requests.Response:
        """Start a streamed download of `url`; the caller reads the raw bytes and closes it."""
        display = mask_url(url)
        clean_url, credentials = _split_credentials(url)
        _require_http(clean_url, display)
        self._check_file_host(clean_url, simple_url)
        is_trusted = simple_url is not None and simple_url == self.trusted_url
        if credentials is None and simple_url is not None:
            index_url, index_credentials = _split_credentials(simple_url)
            origin = url_origin(clean_url)
            if index_credentials and origin is not None and origin == url_origin(index_url):
                credentials = index_credentials
        # identity: requests must not decode gzip, because the sha256 is of the raw bytes.
        headers = {"Accept-Encoding": "identity"}

        def attempt() -> requests.Response:
            response = self._get(clean_url, headers, credentials, is_trusted=is_trusted)
            try:
                _check_status(response, display)
            except BaseException:
                response.close()
                raise
            return response

        return self._with_retries(attempt, display)

    def close(self) -> None:
        """Close every session this client opened (in any thread); later calls open new ones."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
            adapters, self._adapters = self._adapters, {}
            self._local = threading.local()
        for session in sessions:
            session.close()
        for adapter in adapters.values():
            adapter.close()

    def _check_file_host(self, url: str, simple_url: str | None) -> None:
        """With MIRROR_FILE_HOSTS set, a file link must point at one of them or at the index's
        own host (checked for the link; its redirects are checked by address only)."""
        if not self.file_hosts:
            return
        host = (urlsplit(url).hostname or "").lower()
        index_origin = url_origin(simple_url or "")
        if host in self.file_hosts or (index_origin is not None and host == index_origin[1]):
            return
        log.warning("refused a file link to %s: not in MIRROR_FILE_HOSTS", host)
        raise UpstreamRefused(
            f"Upstream address refused: file host {host} is not in MIRROR_FILE_HOSTS", url=None
        )

    def _session(self, *, is_trusted: bool) -> requests.Session:
        """This thread's session; requests for the operator's MIRROR_URL get one of their own,
        so that no connection to the trusted host is ever reused for another index."""
        attribute = "trusted_session" if is_trusted else "session"
        session: requests.Session | None = getattr(self._local, attribute, None)
        if session is None:
            session = self._session_factory()
            if self.ca_bundle:
                session.verify = self.ca_bundle
            session.max_redirects = MAX_REDIRECTS
            with self._lock:
                # Every connection, redirect hops included, is made through the guard.
                adapter = self._adapters.get(is_trusted)
                if adapter is None:
                    guard = self._trusted_guard if is_trusted else self._guard
                    adapter = GuardedAdapter(guard, pool_maxsize=POOL_CONNECTIONS)
                    self._adapters[is_trusted] = adapter
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._sessions.append(session)
                setattr(self._local, attribute, session)
        return session

    def _get(
        self,
        url: str,
        headers: dict[str, str],
        credentials: tuple[str, str] | None,
        *,
        is_trusted: bool = False,
    ) -> requests.Response:
        auth = None
        if credentials is not None:
            user, password = credentials
            auth = HTTPBasicAuth(user.encode(), password.encode())
        extra: dict[str, Any] = {}
        if self.ca_bundle:
            # Per request too: with trust_env, REQUESTS_CA_BUNDLE would override session.verify.
            extra["verify"] = self.ca_bundle
        return self._session(is_trusted=is_trusted).get(
            url,
            headers={"User-Agent": USER_AGENT, **headers},
            auth=auth,
            timeout=(self.connect_timeout_seconds, self.read_timeout_seconds),
            stream=True,
            allow_redirects=True,
            **extra,
        )

    def _with_retries(self, attempt: Callable[[], T], display: str) -> T:
        """Run `attempt`, retrying transient failures with exponential backoff (GETs only)."""
        attempts = self.retries + 1
        failure = _Failure("no attempt made", retry=False)
        for number in range(1, attempts + 1):
            try:
                return attempt()
            except AddressRefused as exc:  # not retried: the answer would be the same
                raise UpstreamRefused(str(exc), url=display) from None
            except _Failure as exc:
                failure = exc
            except requests.RequestException as exc:
                failure = self._classify(exc)
            if not failure.retry:
                break
            if number < attempts:
                delay_seconds = self.backoff_seconds * 2 ** (number - 1)
                log.debug(
                    "%s: %s; retry %d of %d in %.2fs",
                    display,
                    failure.what,
                    number,
                    self.retries,
                    delay_seconds,
                )
                time.sleep(delay_seconds)
        raise failure.error(display, number) from failure.__cause__

    def _classify(self, exc: requests.RequestException) -> _Failure:
        """Decide what a requests exception means and whether trying again may help."""
        if isinstance(exc, requests.exceptions.SSLError):
            failure = _Failure(f"TLS error: {_cause_text(exc)}", retry=False)
        elif isinstance(exc, requests.exceptions.ConnectTimeout):
            what = f"connect timeout after {self.connect_timeout_seconds:g}s"
            failure = _Failure(what, retry=True, is_timeout=True)
        elif isinstance(exc, requests.exceptions.ReadTimeout) or _wraps_read_timeout(exc):
            # Not retried: a slow upstream rarely speeds up, and pip gives up after 15 s itself.
            what = f"read timeout after {self.read_timeout_seconds:g}s"
            failure = _Failure(what, retry=False, is_timeout=True)
        elif isinstance(
            exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError
        ):
            failure = _Failure(f"connection failed: {_cause_text(exc)}", retry=True)
        elif isinstance(exc, requests.exceptions.TooManyRedirects):
            failure = _Failure("too many redirects", retry=False)
        else:
            failure = _Failure(f"request failed: {_cause_text(exc)}", retry=False)
        failure.__cause__ = exc
        return failure


def iter_raw(response: requests.Response, *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield a file response's bytes exactly as sent; transfer failures raise UpstreamError."""
    # The URL asked for, not a redirect target (which may carry a signed, secret query).
    display = mask_url(response.history[0].url if response.history else response.url)
    try:
        yield from response.raw.stream(chunk_bytes, decode_content=False)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise UpstreamTimeout(f"{display}: read timeout during download", url=display) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        what = f"download interrupted: {_cause_text(exc)}"
        raise UpstreamError(f"{display}: {what}", url=display) from exc


class _Failure(Exception):
    """One failed attempt: what happened, and whether another attempt may help."""

    def __init__(
        self, what: str, *, retry: bool, is_timeout: bool = False, status_code: int | None = None
    ) -> None:
        super().__init__(what)
        self.what = " ".join(what.split())[:MAX_WHAT_CHARS]
        self.retry = retry
        self.is_timeout = is_timeout
        self.status_code = status_code

    def error(self, display: str, attempts: int) -> UpstreamError:
        cls = UpstreamTimeout if self.is_timeout else UpstreamError
        suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
        message = f"{display}: {self.what}{suffix}"
        return cls(message, url=display, status_code=self.status_code)


def _check_status(response: requests.Response, display: str) -> None:
    """Accept 200; 404/410 are NotFound, 5xx may be retried, anything else is an error."""
    status = response.status_code
    if status in OK_STATUSES:
        return
    what = f"HTTP {status} {_reason(response)}".rstrip()
    if status in NOT_FOUND_STATUSES:
        raise UpstreamNotFound(f"{display}: {what}", url=display, status_code=status)
    if status >= 500:
        raise _Failure(what, retry=True, status_code=status)
    raise UpstreamError(f"{display}: {what}", url=display, status_code=status)


def _reason(response: requests.Response) -> str:
    reason = response.reason if isinstance(response.reason, str) else ""
    if not reason.strip():
        try:
            reason = HTTPStatus(response.status_code).phrase
        except ValueError:
            reason = ""
    return " ".join(reason.split())[:60]


def _read_page(response: requests.Response, display: str) -> bytes:
    """Read a (possibly compressed) page body, refusing one that grows past MAX_PAGE_BYTES."""
    chunks: list[bytes] = []
    total_bytes = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        total_bytes += len(chunk)
        if total_bytes > MAX_PAGE_BYTES:
            raise UpstreamError(f"{display}: page larger than {MAX_PAGE_BYTES} bytes", url=display)
        chunks.append(chunk)
    return b"".join(chunks)


def _page_kind(content_type: str) -> str | None:
    """'json' or 'html' by media type (PEP 691: exact types, parameters ignored), else None."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MIME_JSON:
        return "json"
    if media in (MIME_HTML, MIME_TEXT_HTML):
        return "html"
    return None


def _charset(content_type: str) -> str:
    """The charset parameter if Python knows it, else UTF-8 (PEP 503)."""
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            try:
                return codecs.lookup(value.strip().strip("\"'")).name
            except LookupError:
                break
    return "utf-8"


def _wraps_read_timeout(exc: BaseException) -> bool:
    """requests reports a read timeout in the body as a ConnectionError around urllib3's."""
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)


def _fits(value: str | None, limit: int) -> str | None:
    return value if value is not None and len(value) <= limit else None


def _cause_text(exc: BaseException) -> str:
    """The innermost cause's message (e.g. 'Connection refused'), without wrappers' noise."""
    current = exc
    for _ in range(8):  # bounded walk down the wrapper chain
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        if inner is None:
            inner = current.__cause__  # e.g. urllib3's NewConnectionError from the OSError
        if inner is None or inner is current:
            break
        current = inner
    if isinstance(current, OSError) and current.strerror:
        return current.strerror
    return str(current) or type(current).__name__


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Remove userinfo from `url`; return the clean URL and the decoded (user, password)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))


def _require_http(url: str, display: str) -> None:
    if url_origin(url) is None:
        raise UpstreamError(f"{display}: not an http(s) URL", url=display)
