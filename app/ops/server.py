"""The server process: `pyshelf serve` becomes gunicorn, `pyshelf healthcheck` asks it /+status."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from typing import NoReturn

from app.core.config import ConfigError, Settings, server_environ

GUNICORN_CONFIG = "python:app.http.gunicorn_conf"
WSGI_APP = "app:create_app()"
HEALTHCHECK_TIMEOUT_SECONDS = 4  # within the image's HEALTHCHECK --timeout=5s
_ANY_ADDRESS = ("0.0.0.0", "::", "[::]", "")  # noqa: S104 - compared with, never bound


def exec_gunicorn() -> NoReturn:
    """Replace this process with gunicorn serving the app (its settings: app/http/gunicorn_conf.py),
    so that signals from Docker or systemd reach gunicorn's master directly."""
    argv = [sys.executable, "-m", "gunicorn", "--config", GUNICORN_CONFIG, WSGI_APP]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, server_environ())  # noqa: S606 - our own interpreter


def status_url(settings: Settings) -> str:
    """This server's /+status on the address gunicorn listens on (loopback for any address)."""
    host = "127.0.0.1" if settings.host in _ANY_ADDRESS else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal in a URL (RFC 3986 section 3.2.2)
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{host}:{settings.port}{settings.script_name}/+status"


def healthcheck(settings: Settings) -> bool:
    """Whether this server's /+status answers 200 (the Docker HEALTHCHECK); why not on stderr."""
    url = status_url(settings)
    # A liveness probe on the server's own address: the certificate names the public host.
    context = ssl._create_unverified_context()  # noqa: S323
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=HEALTHCHECK_TIMEOUT_SECONDS) as response:
            return response.status == 200
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        print(f"pyshelf: healthcheck {url}: {exc}", file=sys.stderr)
        return False


def run_healthcheck() -> int:
    """`pyshelf healthcheck`: 0 when healthy, 1 when not, 2 on invalid configuration."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pyshelf: {exc}", file=sys.stderr)
        return 2
    return 0 if healthcheck(settings) else 1
