"""Which addresses upstream requests may reach (app/core/egress.py), through UpstreamClient."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.core.egress import AddressGuard, parse_networks, refused_kind
from app.core.upstream import UpstreamError, UpstreamRefused
from app.core.upstream_client import MAX_REDIRECTS, UpstreamClient

MIME_JSON = "application/vnd.pypi.simple.v1+json"
PAGE = json.dumps({"meta": {"api-version": "1.1"}, "name": "demo", "files": []}).encode()
HINT = "(set UPSTREAM_ALLOW_PRIVATE to allow it)"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: Python 3.11 calls it not loopback
        ("169.254.169.254", "link-local"),  # cloud instance metadata
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:192.168.1.1", "private"),
        ("fd00::1", "private"),  # RFC 4193 unique local
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),  # RFC 6598 carrier-grade NAT
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_every_non_public_address_class_is_refused(address: str, kind: str | None) -> None:
    assert refused_kind(ipaddress.ip_address(address)) == kind


def test_the_allow_list_lets_exactly_its_networks_through() -> None:
    guard = AddressGuard(allowed=parse_networks(["10.1.0.0/16", "127.0.0.2"]))

    assert guard.why_refused(ipaddress.ip_address("10.1.2.3")) is None
    assert guard.why_refused(ipaddress.ip_address("::ffff:10.1.2.3")) is None
    assert guard.why_refused(ipaddress.ip_address("127.0.0.2")) is None
    assert guard.why_refused(ipaddress.ip_address("10.2.0.1")) == "private"
    assert guard.why_refused(ipaddress.ip_address("127.0.0.1")) == "loopback"


def test_a_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP address or network"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])


class Server:
    """A loopback HTTP server that records request lines; `answer` decides the response."""

    def __init__(self, answer: Any) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                status, headers, body = answer(self.path)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page_server() -> Iterator[Server]:
    """Answers every GET with an empty PEP 691 page."""
    server = Server(lambda _path: (200, {"Content-Type": MIME_JSON}, PAGE))
    yield server
    server.close()


def test_a_name_is_checked_by_what_it_resolves_to_when_connecting(
    page_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: whatever the name said before, the address connected to is checked."""
    real = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "rebind.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    client = UpstreamClient(retries=0)
    port = page_server.url.rsplit(":", 1)[1]

    with pytest.raises(UpstreamRefused) as caught:
        client.fetch_project(f"http://rebind.example:{port}/simple/", "demo")

    reason = f"Upstream address refused: rebind.example resolves to a loopback address {HINT}"
    assert str(caught.value) == reason
    assert page_server.paths == []


def test_the_trusted_url_reaches_its_host_and_nothing_else_does(page_server: Server) -> None:
    """MIRROR_URL's host:port is connected to for requests made for that very URL only."""
    trusted = page_server.url + "/simple/"
    client = UpstreamClient(retries=0, trusted_url=trusted)

    assert client.fetch_project(trusted, "demo") is not None
    with pytest.raises(UpstreamRefused):
        client.fetch_project(page_server.url + "/other/simple/", "demo")
    with pytest.raises(UpstreamRefused):  # a file link of another index, on the same host
        client.open_file(page_server.url + "/f.whl", simple_url=page_server.url + "/x/")
    assert page_server.paths == ["/simple/demo/"]


def test_redirects_stop_after_max_redirects() -> None:
    """A redirect loop on an allowed upstream ends with an error, not 30 requests."""
    looping = Server(lambda path: (302, {"Location": path + "x"}, b""))
    try:
        client = UpstreamClient(retries=0, allow_private=["127.0.0.1/32"])
        with pytest.raises(UpstreamError, match="too many redirects"):
            client.fetch_project(looping.url + "/simple/", "demo")
        assert len(looping.paths) == MAX_REDIRECTS + 1
    finally:
        looping.close()


def test_through_a_proxy_the_proxy_is_reached_and_internal_targets_are_refused(
    page_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY (the operator's) may be internal; a target resolving to an internal address
    here is refused before anything is sent; a name only the proxy resolves goes through."""
    monkeypatch.setenv("HTTP_PROXY", page_server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = UpstreamClient(retries=0)

    with pytest.raises(UpstreamRefused, match=r"^Upstream address refused: 127\.0\.0\.1 is a"):
        client.fetch_project("http://127.0.0.1:1/simple/", "demo")
    assert page_server.paths == []

    assert client.fetch_project("http://pkgs.invalid/simple/", "demo") is not None
    assert page_server.paths == ["http://pkgs.invalid/simple/demo/"]
