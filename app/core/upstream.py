"""What the mirror and the upstream client say to each other: the errors, the entries of a
project page, the PEP 691 media types, and URL helpers (credentials masked, origins).

The HTTP client is app/core/upstream_client.py; parsing PEP 691 JSON and PEP 503 HTML pages into
`UpstreamFile` entries is app/core/upstream_pages.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

# PEP 691 media types: the one definition (the simple pages, prefetch and tests import them).
MIME_JSON = "application/vnd.pypi.simple.v1+json"
MIME_HTML = "application/vnd.pypi.simple.v1+html"
MIME_TEXT_HTML = "text/html"

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class UpstreamError(Exception):
    """The upstream failed: network error, 5xx, refusal or an unparseable page."""

    def __init__(
        self, message: str, *, url: str | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.url = url  # masked
        self.status_code = status_code


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer within the configured timeout."""


class UpstreamNotFound(UpstreamError):
    """The upstream answered 404 or 410 for the project or file."""


class UpstreamRefused(UpstreamError):
    """No request was sent: the URL's host is no public address, or not a MIRROR_FILE_HOSTS one.

    The message names the host as written, never what it resolved to nor a port's state.
    """


@dataclass(frozen=True)
class UpstreamFile:
    """One distribution file as an upstream project page lists it."""

    filename: str
    url: str
    sha256: str | None
    requires_python: str | None
    yanked: bool | str
    upload_time: str | None
    size: int | None
    core_metadata: str | bool
    provenance: str | None = None  # PEP 740: absolute URL of its provenance object


@dataclass(frozen=True)
class UpstreamPage:
    """A parsed upstream project page with the validators needed to revalidate it."""

    name: str
    files: list[UpstreamFile]
    etag: str | None
    last_modified: str | None
    status: str | None
    status_reason: str | None = None


class ParsedPage(NamedTuple):
    """What a project page document says, before HTTP headers are added."""

    name: str
    files: list[UpstreamFile]
    status: str | None
    status_reason: str | None = None


def mask_url(url: str) -> str:
    """Return `url` with its userinfo replaced by `***` (or `***:***`), for logs and pages."""
    match = _SCHEME_PREFIX.match(url)
    if match is None:
        return url
    start = match.end()
    end = min((i for i in (url.find(c, start) for c in "/?#") if i != -1), default=len(url))
    userinfo, at, hostport = url[start:end].rpartition("@")
    if not at:
        return url
    masked = "***:***" if ":" in userinfo else "***"
    return f"{url[:start]}{masked}@{hostport}{url[end:]}"


def url_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL with the default port filled in (RFC 6454
    section 4), or None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]
