"""Which addresses upstream requests may connect to: refusing internal ones stops SSRF."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.connection import allowed_gai_family

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_SETTING = "UPSTREAM_ALLOW_PRIVATE"


class AddressRefused(Exception):
    """An upstream host is (or resolves to) an address that upstream requests may not reach."""


def refused_kind(address: IPAddress) -> str | None:
    """Why `address` is no public Internet address ('loopback', 'private', ...), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    checks = (
        ("unspecified", address.is_unspecified),  # 0.0.0.0 and :: reach this machine
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),  # 169.254.169.254: cloud instance metadata
        ("multicast", address.is_multicast),
        ("private", address.is_private),  # RFC 1918, RFC 4193 (ULA), documentation ranges
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),  # e.g. 100.64.0.0/10 (RFC 6598, carrier NAT)
    )
    return next((kind for kind, is_kind in checks if is_kind), None)


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR networks (or single addresses) as ip_network objects; ValueError names a bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not an IP address or network") from None
    return tuple(networks)


@dataclass(frozen=True)
class AddressGuard:
    """Decides, at connect time, which of a host's addresses an upstream request may use.

    `allowed`: networks let through although not public (UPSTREAM_ALLOW_PRIVATE).
    `trusted`: (host, port) pairs connected to whatever they resolve to: the operator's own
    MIRROR_URL, which may well be an internal mirror.
    """

    allowed: tuple[IPNetwork, ...] = ()
    trusted: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def why_refused(self, address: IPAddress) -> str | None:
        """The refused address class of `address`, or None when it may be connected to."""
        kind = refused_kind(address)
        if kind is None:
            return None
        mapped = getattr(address, "ipv4_mapped", None)
        if any(address in net or (mapped is not None and mapped in net) for net in self.allowed):
            return None
        return kind

    def connect(self, host: str, port: int, timeout: Any, options: dict[str, Any]) -> socket.socket:
        """Resolve `host` once and connect to the first allowed address that answers.

        The addresses are checked after resolution, right before connecting to them, so a
        name that resolves differently the second time (DNS rebinding) gains nothing.
        """
        host = host.strip("[]")
        is_trusted = (host.lower(), port) in self.trusted
        refused: tuple[str, str] | None = None  # (address, kind) of the first refused one
        error: OSError | None = None
        infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
        for family, kind, proto, _canonical, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            why = None if is_trusted else self.why_refused(address)
            if why is not None:
                refused = refused or (str(address), why)
                continue
            sock = socket.socket(family, kind, proto)
            try:
                for option in options.get("socket_options") or ():
                    sock.setsockopt(*option)
                if timeout is None or isinstance(timeout, int | float):  # else: the default
                    sock.settimeout(timeout)
                if options.get("source_address"):
                    sock.bind(options["source_address"])
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        if error is not None:
            raise error
        if refused is not None:
            log.warning("refused to connect to %s:%s: %s is a %s address", host, port, *refused)
            raise AddressRefused(_refusal_text(host, refused[1]))
        raise OSError(f"no address found for {host}")

    def check_via_proxy(self, url: str) -> None:
        """Best effort when a proxy connects for us: refuse a target that resolves (here) to a
        refused address. The proxy resolves the name itself, so its own rules decide in the end."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not host or (host, port) in self.trusted:
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return  # only the proxy can resolve it: nothing to check here
        for *_, sockaddr in infos:
            why = self.why_refused(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
            if why is not None:
                log.warning("refused to send %s through the proxy: a %s address", host, why)
                raise AddressRefused(_refusal_text(host, why))


def _refusal_text(host: str, kind: str) -> str:
    """The reason a client and /+status see: the host as written, never a resolved address."""
    article = "an" if kind[0] in "aeiou" else "a"
    try:
        ipaddress.ip_address(host)
        what = f"{host} is {article} {kind} address"
    except ValueError:
        what = f"{host} resolves to {article} {kind} address"
    return f"Upstream address refused: {what} (set {ALLOW_SETTING} to allow it)"


class _GuardedConnection(HTTPConnection):
    guard: AddressGuard

    def _new_conn(self) -> socket.socket:
        return _guarded_new_conn(self)


class _GuardedHTTPSConnection(HTTPSConnection):
    guard: AddressGuard

    def _new_conn(self) -> socket.socket:
        return _guarded_new_conn(self)


def _guarded_new_conn(conn: _GuardedConnection | _GuardedHTTPSConnection) -> socket.socket:
    """urllib3's `_new_conn`, with the guard choosing the address (same exceptions raised)."""
    options = {"socket_options": conn.socket_options, "source_address": conn.source_address}
    try:
        return conn.guard.connect(conn.host, conn.port, conn.timeout, options)
    except socket.gaierror as exc:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        raise urllib3.exceptions.ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        ) from exc
    except OSError as exc:
        raise urllib3.exceptions.NewConnectionError(
            conn, f"Failed to establish a new connection: {exc}"
        ) from exc


class GuardedAdapter(HTTPAdapter):
    """A requests transport whose direct connections (every redirect hop too) pass the guard."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        self.guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """urllib3's pool manager, with connection classes that ask the guard."""
        super().init_poolmanager(*args, **kwargs)
        guard = self.guard
        http = type("Connection", (_GuardedConnection,), {"guard": guard})
        https = type("HTTPSConnection", (_GuardedHTTPSConnection,), {"guard": guard})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("Pool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("HTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """Send; through a proxy (the operator's choice, reached unchecked) the target is
        checked by a local lookup first, since the connection is then the proxy's."""
        if select_proxy(request.url or "", kwargs.get("proxies")):
            self.guard.check_via_proxy(request.url or "")
        return super().send(request, *args, **kwargs)
