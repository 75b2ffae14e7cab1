"""The kinds of settings: how a variable's text becomes a value (sizes, durations, ports,
networks, choices...), each with its label in the configuration reference."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.core.storage import parse_storage_url

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_size(text: str) -> int:
    """Parse '100M', '1G', '5242880' or '512KiB' into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 104857600, 100M, 1G)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def parse_duration(text: str) -> int:
    """Parse '12h', '30m', '2d', '90s' or '3600' (seconds) into seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 12h, 30m, 2d, 3600)")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


# --- kinds: how a variable's text becomes a value ---------------------------------------------
# Each parser takes the variable's name and its (non-empty) text and raises ValueError with one
# line per problem, naming the variable; an empty variable means the row's default instead.


@dataclass(frozen=True)
class Kind:
    """How the text of a variable reads: its parser, its name in the docs, what empty means."""

    label: str  # the "type" column of docs/configuration.md
    parse: Callable[[str, str], Any]
    empty: Any = ""  # the value of a row whose default is empty
    strip: bool = True  # False: the text counts as given, spaces and all (a password)
    secret: bool = False  # kept out of repr(Settings), so out of logs and tracebacks


def _text(name: str, text: str) -> str:
    return text


def _integer(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name}={text!r} must not be negative")
    return value


def _decimal(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name}={text!r} must not be negative")
    return value


def _at_least_one(name: str, text: str) -> int:
    value = _integer(name, text)
    if value < 1:
        raise ValueError(f"{name}={text!r}: at least 1")
    return value


def _port(name: str, text: str) -> int:
    value = _integer(name, text)
    if not 1 <= value <= 65_535:
        raise ValueError(f"{name}={text!r}: a port is 1 to 65535")
    return value


def _request_timeout(name: str, text: str) -> float:
    value = _decimal(name, text)
    if value < 1:
        raise ValueError(f"{name}={value!r}: at least 1 second")
    return value


def _size(name: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _request_body_size(name: str, text: str) -> int:
    size = _size(name, text)
    if size < 1024:
        raise ValueError(f"{name}={text!r}: at least 1K, or logins and API calls are refused")
    return size


def _cache_cap(name: str, text: str) -> int:
    size = _size(name, text)
    if size == 0:
        raise ValueError(f"{name}=0 would evict every file; leave it empty")
    return size


def _lifetime(name: str, text: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if seconds == 0:
        raise ValueError(f"{name}=0 would end every session at once")
    return seconds


def _duration(name: str, text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _boolean(name: str, text: str) -> bool:
    word = text.lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(f"{name}={word!r}: use true or false")
    return word in _TRUE


def _choice(words: tuple[str, ...], case: Callable[[str], str], hint: str) -> Kind:
    def parse(name: str, text: str) -> str:
        word = case(text)
        if word not in words:
            raise ValueError(f"{name}={word!r}: {hint}")
        return word

    return Kind(f"{', '.join(words[:-1])} or {words[-1]}", parse)


def _http_url(what: str) -> Callable[[str, str], str]:
    def parse(name: str, text: str) -> str:
        if not re.match(r"^https?://[^/]+", text):
            raise ValueError(f"{name} must be an http(s) URL{what}, not {text!r}")
        return text

    return parse


def _user_name(name: str, text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
        raise ValueError(f"{name}={text!r}: use letters, digits, '.', '_' or '-'")
    return text


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _networks(name: str, text: str) -> tuple[str, ...]:
    items, problems = _items(text), []
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            problems.append(
                f"{name}: {item!r} is not an IP address or network "
                "(use CIDR, e.g. 10.0.0.0/8,fd00::/8)"
            )
    if problems:
        raise ValueError("\n".join(problems))
    return tuple(items)


def _proxies(name: str, text: str) -> tuple[str, ...]:
    items, problems = _items(text), []
    for item in items:
        try:
            if item != "*":
                ipaddress.ip_network(item, strict=False)
        except ValueError:
            problems.append(f"{name}: {item!r} is not an IP address, network or *")
    if problems:
        raise ValueError("\n".join(problems))
    return tuple(items)


def _hosts(name: str, text: str) -> tuple[str, ...]:
    hosts = [host.lower() for host in _items(text)]
    problems = [
        f"{name}: {host!r} is not a host name (no scheme or port)"
        for host in hosts
        if not re.fullmatch(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]", host)
    ]
    if problems:
        raise ValueError("\n".join(problems))
    return tuple(hosts)


def _path_prefix(name: str, text: str) -> str:
    prefix = text.strip("/")  # "" and "/" both mean the root
    return f"/{prefix}" if prefix else ""


def _storage_url(name: str, text: str) -> str:
    try:
        parse_storage_url(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return text


TEXT = Kind("text", _text)
SECRET = Kind("secret", _text, secret=True)
PASSWORD = Kind("secret", _text, strip=False, secret=True)
SQL_URL = Kind("URL", _text)  # checked with SECRET_KEY, in _problems_between
OPTIONAL_TEXT = Kind("text", _text, empty=None)
FILE = Kind("file", _text, empty=None)
FOLDER = Kind("folder", lambda name, text: Path(text))
URL = Kind("URL", _http_url(" of a simple index"))
OPTIONAL_URL = Kind("URL", _http_url(""), empty=None)
STORAGE = Kind("URL", _storage_url)
PREFIX = Kind("path", _path_prefix)
USER_NAME = Kind("name", _user_name)
NUMBER = Kind("number", _integer)
WORKERS = Kind("number", _at_least_one, empty=None)
THREADS = Kind("number", _at_least_one)
PORT = Kind("number", _port)
SECONDS = Kind("seconds", _integer)
DECIMAL_SECONDS = Kind("seconds", _decimal)
REQUEST_SECONDS = Kind("seconds", _request_timeout)
DURATION = Kind("duration", _lifetime)
OPTIONAL_DURATION = Kind("duration", _duration)
SIZE = Kind("size", _size)
BODY_SIZE = Kind("size", _request_body_size)
CACHE_SIZE = Kind("size", _cache_cap, empty=None)
BOOLEAN = Kind("true or false", _boolean)
NETWORKS = Kind("networks", _networks, empty=())
PROXIES = Kind("networks or *", _proxies, empty=())
HOSTS = Kind("host names", _hosts, empty=())
LOG_LEVELS = _choice(
    ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    str.upper,
    "use DEBUG, INFO, WARNING or ERROR",
)
LOG_FORMATS = _choice(("text", "json"), str.lower, "use text or json")
MIRROR_CREATORS = _choice(("superuser", "users"), str.lower, "use superuser or users")
VULNERABLE_THRESHOLDS = replace(
    _choice(
        ("off", "all", "low", "moderate", "high", "critical"),
        str.lower,
        "use off, all, low, moderate, high or critical",
    ),
    empty=None,
)
