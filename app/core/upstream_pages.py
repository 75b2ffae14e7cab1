"""Parsing an upstream project page into entries: PEP 691 JSON and PEP 503 HTML, with the
PEP 592 (yanked), 658/714 (core metadata), 700 (size, upload time), 740 (provenance) and 792
(project status) fields.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from app.core.upstream import ParsedPage, UpstreamError, UpstreamFile, mask_url, url_origin

log = logging.getLogger(__name__)

SUPPORTED_API_MAJOR = "1"  # PEP 629: refuse a major version we do not understand
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# An upload time in UTC with Z and none or all six digits of its fraction: the form
# normalize_upload_time gives (which drops a fraction of .000000).
_NORMAL_TIME = re.compile(
    r"(?P<seconds>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?P<fraction>\.[0-9]{6})?Z"
)
# An absolute http(s) URL that urljoin and urldefrag give back as it is: no space or control
# character, query, parameters or brackets; the fragment is all after the first "#".
_PLAIN_ABSOLUTE = re.compile(
    r"(?P<url>(?P<origin>https?://[^/?#;\[\]\x00-\x20\x7f]+)/[^?#;\x00-\x20\x7f]*)"
    r"(?:#(?P<fragment>[^\x00-\x20\x7f]*))?\Z"
)
_HTTP_ORIGINS: set[str] = set()  # origins of plain URLs seen valid (the hosts met)
MAX_KNOWN_ORIGINS = 1000  # past that, further hosts are checked every time
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")  # a separator, a control character, DEL


def parse_json_page(data: bytes | str, base_url: str, requested_name: str) -> ParsedPage:
    """Parse a PEP 691 project page: bad structure raises UpstreamError, odd values are dropped."""
    display = mask_url(base_url)
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UpstreamError(f"{display}: malformed JSON page: {exc}"[:300], url=display) from None
    if not isinstance(document, dict):
        raise _malformed(display, "top level is not an object")
    meta = document.get("meta")
    version = meta.get("api-version") if isinstance(meta, dict) else None
    if isinstance(version, str) and version.split(".", 1)[0].strip() != SUPPORTED_API_MAJOR:
        raise _malformed(display, f"unsupported api-version {version[:20]!r}")
    entries = document.get("files")
    if not isinstance(entries, list):
        raise _malformed(display, "'files' is not a list")
    files: list[UpstreamFile] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _malformed(display, "a file entry is not an object")
        filename, href, hashes = entry.get("filename"), entry.get("url"), entry.get("hashes", {})
        if not isinstance(filename, str) or not isinstance(href, str):
            raise _malformed(display, "a file entry lacks 'filename' or 'url'")
        if not isinstance(hashes, dict):
            raise _malformed(display, f"'hashes' of {filename[:80]!r} is not an object")
        url, fragment = _resolve(base_url, href)
        if url is None or not _is_safe_filename(filename):
            log.warning("%s: skipping file %r at %s", display, filename[:80], mask_url(href[:200]))
            continue
        files.append(
            UpstreamFile(
                filename=filename,
                url=url,
                sha256=_sha256_hex(hashes.get("sha256")) or _fragment_sha256(fragment),
                requires_python=_text(entry.get("requires-python")),
                yanked=_json_yanked(entry.get("yanked", False)),
                upload_time=normalize_upload_time(entry.get("upload-time")),
                size=_size(entry.get("size")),
                core_metadata=_json_core_metadata(entry),
                provenance=_provenance_url(base_url, entry.get("provenance")),
            )
        )
    name = document.get("name")
    name = name.strip() if isinstance(name, str) and name.strip() else requested_name
    status, reason = _json_status(document.get("project-status"))
    return ParsedPage(name, _unique(files), status, reason)


def parse_html_page(text: str, base_url: str, requested_name: str) -> ParsedPage:
    """Parse a PEP 503 project page (any markup around the anchors; `<base href>` honoured)."""
    display = mask_url(base_url)
    parser = _AnchorCollector()
    try:
        parser.feed(text)
        parser.close()
    except (AssertionError, ValueError) as exc:  # html.parser's rare internal failures
        raise UpstreamError(f"{display}: unparseable HTML page: {exc}"[:300], url=display) from None
    # PEP 503: the first <base href> sets the base for every link in the document.
    document_url = urljoin(base_url, parser.base_href) if parser.base_href else base_url
    files: list[UpstreamFile] = []
    for attributes in parser.anchors:
        href = attributes.get("href")
        if not href or not href.strip():
            continue
        url, fragment = _resolve(document_url, href.strip())
        # PEP 503: the filename is the href's last path segment, never the anchor text.
        filename = _last_segment(url) if url else None
        if url is None or filename is None or not _is_safe_filename(filename):
            log.warning("%s: skipping link %s", display, mask_url(href[:200]))
            continue
        files.append(
            UpstreamFile(
                filename=filename,
                url=url,
                sha256=_fragment_sha256(fragment),
                requires_python=_text(attributes.get("data-requires-python")),
                yanked=_html_yanked(attributes),
                upload_time=normalize_upload_time(attributes.get("data-upload-time")),
                size=None,  # HTML has no size (PEP 700)
                core_metadata=_html_core_metadata(attributes),
                provenance=_provenance_url(document_url, attributes.get("data-provenance")),
            )
        )
    return ParsedPage(requested_name, _unique(files), parser.status, parser.status_reason)


class _AnchorCollector(HTMLParser):
    """Collects `<a>` attributes, the first `<base href>` and the PEP 792 status meta tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # attribute values arrive unescaped (PEP 503)
        self.anchors: list[dict[str, str | None]] = []
        self.base_href: str | None = None
        self.status: str | None = None
        self.status_reason: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "base", "meta"):
            return
        attributes: dict[str, str | None] = {}
        for key, value in attrs:
            attributes.setdefault(key, value)  # HTML: the first of duplicate attributes wins
        if tag == "a":
            self.anchors.append(attributes)
        elif tag == "base":
            href = (attributes.get("href") or "").strip()
            if href and self.base_href is None:
                self.base_href = href
        else:
            meta = (attributes.get("name") or "").strip().lower()
            content = (attributes.get("content") or "").strip()
            if meta == "pypi:project-status" and content and self.status is None:
                self.status = content
            elif meta == "pypi:project-status-reason" and content and self.status_reason is None:
                self.status_reason = content


def normalize_upload_time(value: object) -> str | None:
    """`YYYY-MM-DDTHH:MM:SS[.ffffff]Z` in UTC (PEP 700), or None; a value without offset is UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    normal = _NORMAL_TIME.fullmatch(value)
    if normal is not None:  # as an index writes it: only its date needs a check
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return None
        fraction = normal["fraction"] or ".000000"
        return value if fraction != ".000000" else f"{normal['seconds']}Z"
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{fraction}Z"
    )


def _malformed(display: str, what: str) -> UpstreamError:
    return UpstreamError(f"{display}: malformed JSON page: {what}", url=display)


def _resolve(base_url: str, href: str) -> tuple[str | None, str]:
    """The absolute http(s) URL of `href` without fragment (None if unusable), and the fragment."""
    plain = _PLAIN_ABSOLUTE.match(href) if href.isascii() else None
    if plain is not None:
        # urljoin and urldefrag give such a URL back as it is: only its origin needs a look,
        # once per host (a page lists thousands of files on one or two hosts).
        origin = plain["origin"]
        is_http = origin in _HTTP_ORIGINS or url_origin(origin) is not None
        if is_http and len(_HTTP_ORIGINS) < MAX_KNOWN_ORIGINS:
            _HTTP_ORIGINS.add(origin)
        return (plain["url"] if is_http else None), plain["fragment"] or ""
    try:
        url, fragment = urldefrag(urljoin(base_url, href))
    except ValueError:
        return None, ""
    return (url if url_origin(url) is not None else None), fragment


def _provenance_url(base_url: str, value: object) -> str | None:
    """PEP 740's `provenance` key or `data-provenance` attribute as an absolute URL, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return _resolve(base_url, value.strip())[0]


def _last_segment(url: str) -> str | None:
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return segment or None


def _is_safe_filename(filename: str) -> bool:
    """Refuse names that could escape a directory or corrupt a header or a page."""
    return (
        bool(filename)
        and filename not in (".", "..")
        and len(filename) <= 255
        and not _UNSAFE_CHARS.search(filename)
    )


def _unique(files: list[UpstreamFile]) -> list[UpstreamFile]:
    """Keep the first entry per filename: a filename names one file (PEP 503)."""
    seen: set[str] = set()
    unique = []
    for upstream_file in files:
        if upstream_file.filename not in seen:
            seen.add(upstream_file.filename)
            unique.append(upstream_file)
    return unique


def _sha256_hex(value: object) -> str | None:
    if isinstance(value, str) and _HEX64.fullmatch(value.strip()):
        return value.strip().lower()
    return None


def _fragment_sha256(fragment: str) -> str | None:
    """sha256 from a `#sha256=<hex>` fragment; other algorithms are ignored (PEP 503)."""
    for piece in fragment.split("&"):
        algorithm, _, value = piece.partition("=")
        if algorithm.strip().lower() == "sha256":
            return _sha256_hex(value)
    return None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _size(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _json_yanked(value: object) -> bool | str:
    """PEP 691: true or a reason; "" counts as not yanked, as unearth reads it (PEP 592)."""
    if isinstance(value, str):
        return value.strip() or False
    return value is True


def _html_yanked(attributes: dict[str, str | None]) -> bool | str:
    """PEP 592: the attribute's presence yanks; its value, when not blank, is the reason."""
    if "data-yanked" not in attributes:
        return False
    return (attributes["data-yanked"] or "").strip() or True


def _metadata_value(value: str) -> str | bool:
    """A PEP 658 attribute value: 'sha256=<hex>' → hex, 'false' → False, anything else → True."""
    lowered = value.strip().lower()
    if lowered == "false":
        return False
    algorithm, separator, digest = lowered.partition("=")
    if separator and algorithm.strip() == "sha256":
        return _sha256_hex(digest) or True
    return True


def _json_core_metadata(entry: dict[str, Any]) -> str | bool:
    """PEP 714 `core-metadata`, or its older spellings as aliases; first present wins."""
    for key in ("core-metadata", "dist-info-metadata", "data-dist-info-metadata"):
        if key not in entry:
            continue
        value = entry[key]
        if isinstance(value, dict):
            return _sha256_hex(value.get("sha256")) or True
        if isinstance(value, str):
            return _metadata_value(value) if value.strip() else False
        return value is True
    return False


def _html_core_metadata(attributes: dict[str, str | None]) -> str | bool:
    """`data-core-metadata`, else `data-dist-info-metadata` (PEP 714); a blank value is absent."""
    for key in ("data-core-metadata", "data-dist-info-metadata"):
        value = attributes.get(key)
        if value is not None and value.strip():
            return _metadata_value(value)
    return False


def _json_status(value: object) -> tuple[str | None, str | None]:
    """PEP 792 `project-status`: its `status` (`state` in the PEP's prose) and `reason`."""
    if not isinstance(value, dict):
        return _text(value), None
    return _text(value.get("status", value.get("state"))), _text(value.get("reason"))
