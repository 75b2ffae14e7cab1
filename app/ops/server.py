"""The server process: `pyshelf serve` becomes gunicorn, `pyshelf healthcheck` asks it /+status."""

from __future__ import annotations

import gc
import ssl
import sys
import urllib.request
from pathlib import Path
from typing import NoReturn

from app.core.config import ConfigError, Settings, set_server_environ

GUNICORN_CONFIG = "python:app.http.gunicorn_conf"
WSGI_APP = "app:create_app()"
GUNICORN_ARGS = ["--config", GUNICORN_CONFIG, WSGI_APP]
HEALTHCHECK_TIMEOUT_SECONDS = 4  # within the image's HEALTHCHECK --timeout=5s
_ANY_ADDRESS = ("0.0.0.0", "::", "[::]", "")  # noqa: S104 - compared with, never bound


def run_gunicorn() -> NoReturn:
    """Become gunicorn's master in this process, serving the app (its settings:
    app/http/gunicorn_conf.py): signals from Docker or systemd reach it directly, and the workers
    it forks start with what `prepare` imported (SQLAlchemy, the models: half a second each).

    By then nothing may have imported prometheus_client: gunicorn_conf.py sets its
    PROMETHEUS_MULTIPROC_DIR first (tests/test_command.py checks)."""
    set_server_environ()
    # Only now: gunicorn reads WEB_CONCURRENCY from the environment when it is imported.
    import gunicorn
    from gunicorn.app.wsgiapp import WSGIApplication

    # The command line of `python -m gunicorn`: gunicorn parses it, and an upgrade by USR2
    # executes it again (a new master in a new interpreter, as before).
    sys.argv = [str(Path(gunicorn.__file__).with_name("__main__.py")), *GUNICORN_ARGS]
    # What the master holds stays shared with its workers: the collector skips it from now on
    # instead of touching (and so copying) every page of it in each worker.
    gc.collect()
    gc.freeze()
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog="gunicorn").run()
    sys.exit(0)  # not reached: gunicorn exits itself when it stops


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
