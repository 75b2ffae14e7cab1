"""Behind a reverse proxy: X-Forwarded-Prefix and co., believed from FORWARDED_ALLOW_IPS only."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import pytest

from app import create_app
from app.core.config import ConfigError, Settings
from tests.builders import make_wheel
from tests.test_upload import fast_password_hashes, upload  # noqa: F401 - autouse fixture

WHEEL, WHEEL_BYTES = make_wheel("Demo.Pkg", "1.0.0")
PROXY = {"X-Forwarded-Prefix": "/pypi", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "pkgs"}
UNTRUSTED_PEER = {"REMOTE_ADDR": "203.0.113.9"}  # TEST-NET-3: not in the default 127.0.0.1,::1


def hrefs(html: str) -> list[str]:
    """The link targets of a simple page."""
    return re.findall(r'href="([^"#]+)', html)


@pytest.fixture
def uploaded(client: Any, admin_auth: dict[str, str]) -> None:
    """admin/dev holds Demo.Pkg 1.0.0 as a wheel."""
    response = upload(client, WHEEL, WHEEL_BYTES, headers=admin_auth)
    assert response.status_code == 200, response.status


@pytest.mark.usefixtures("uploaded")
def test_project_page_behind_a_trusted_proxy_links_below_its_prefix(client: Any) -> None:
    """HTML and JSON file URLs start with X-Forwarded-Prefix, so pip fetches through the proxy."""
    html = client.get("/admin/dev/+simple/demo-pkg/", headers=PROXY)
    as_json = client.get(
        "/admin/dev/+simple/demo-pkg/",
        headers={**PROXY, "Accept": "application/vnd.pypi.simple.v1+json"},
    )

    assert html.status == "200 OK"
    [href] = hrefs(html.get_data(as_text=True))
    assert href.startswith("/pypi/admin/dev/+f/"), href
    assert href.split("#")[0].endswith(f"/{WHEEL}")
    [entry] = as_json.get_json()["files"]
    assert entry["url"] == href


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/admin/dev/+simple", "/pypi/admin/dev/+simple/"),
        ("/admin/dev/+simple/Demo.Pkg/", "/pypi/admin/dev/+simple/demo-pkg/"),
        ("/admin/dev/+simple/demo-pkg", "/pypi/admin/dev/+simple/demo-pkg/"),
    ],
)
def test_redirects_behind_a_trusted_proxy_keep_its_prefix(
    client: Any, path: str, location: str
) -> None:
    """Canonical-URL redirects (PEP 503) stay below the prefix the proxy serves pyshelf at."""
    response = client.get(path, headers=PROXY)

    assert response.status == "301 MOVED PERMANENTLY"
    assert response.headers["Location"] == location


@pytest.mark.usefixtures("uploaded")
def test_forwarded_headers_from_an_untrusted_peer_are_ignored(client: Any) -> None:
    """A client that is not a configured proxy cannot move links elsewhere with X-Forwarded-*."""
    page = client.get("/admin/dev/+simple/demo-pkg/", headers=PROXY, environ_base=UNTRUSTED_PEER)
    redirect = client.get("/admin/dev/+simple", headers=PROXY, environ_base=UNTRUSTED_PEER)

    [href] = hrefs(page.get_data(as_text=True))
    assert href.startswith("/admin/dev/+f/"), href
    assert redirect.headers["Location"] == "/admin/dev/+simple/"


def test_forwarded_allow_ips_trusts_networks_and_nothing_else(app: Any, settings: Settings) -> None:
    """FORWARDED_ALLOW_IPS takes networks; loopback is then just another untrusted peer."""
    behind_lan_proxy = create_app(
        dataclasses.replace(settings, forwarded_allow_ips=("10.0.0.0/8",))
    )
    client = behind_lan_proxy.test_client()

    from_proxy = client.get(
        "/admin/dev/+simple", headers=PROXY, environ_base={"REMOTE_ADDR": "10.1.2.3"}
    )
    from_loopback = client.get("/admin/dev/+simple", headers=PROXY)

    assert from_proxy.headers["Location"] == "/pypi/admin/dev/+simple/"
    assert from_loopback.headers["Location"] == "/admin/dev/+simple/"


def test_forwarded_allow_ips_star_trusts_every_peer(app: Any, settings: Settings) -> None:
    """`*` is for proxies whose address is unknown but that are the only way in."""
    trusting = create_app(dataclasses.replace(settings, forwarded_allow_ips=("*",)))

    response = trusting.test_client().get(
        "/admin/dev/+simple", headers=PROXY, environ_base=UNTRUSTED_PEER
    )

    assert response.headers["Location"] == "/pypi/admin/dev/+simple/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ("127.0.0.1", "::1")),
        ("10.0.0.5", ("10.0.0.5",)),
        (" 10.0.0.0/8 , fd00::/8,", ("10.0.0.0/8", "fd00::/8")),
        ("*", ("*",)),
    ],
)
def test_forwarded_allow_ips_is_read_from_the_environment(
    value: str, expected: tuple[str, ...]
) -> None:
    """A comma-separated list of addresses and networks, as gunicorn's setting of the same name."""
    settings = Settings.from_env({"ENV_FILE": os.devnull, "FORWARDED_ALLOW_IPS": value})

    assert settings.forwarded_allow_ips == expected


def test_forwarded_allow_ips_reports_what_is_not_an_address() -> None:
    """A typo is a configuration error at start, not a proxy silently trusted or ignored."""
    with pytest.raises(ConfigError, match=r"FORWARDED_ALLOW_IPS: 'nginx' is not an IP address"):
        Settings.from_env({"ENV_FILE": os.devnull, "FORWARDED_ALLOW_IPS": "127.0.0.1,nginx"})
