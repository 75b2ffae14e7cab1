"""pyshelf: a private Python package index and caching mirror. `create_app` wires it together."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

if TYPE_CHECKING:
    from flask import Flask

    from app.core.config import Settings

# Flask, SQLAlchemy and the rest are imported in the functions below, not here: `pyshelf
# healthcheck` and gunicorn's settings import app.core.config (and so this package) and need none.
__version__ = "0.1.0"
log = logging.getLogger(__name__)


def load_secret_key(settings: Settings) -> str:
    """SECRET_KEY, or a key generated once into the data directory (shared by all workers)."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        try:  # link() fails if another process won the race: then its key is the key
            path.hardlink_to(tmp)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def trusted_proxy_fix(wsgi_app: WSGIApplication, allowed: Iterable[str]) -> WSGIApplication:
    """Honour X-Forwarded-For/Proto/Host/Port/Prefix, but only from FORWARDED_ALLOW_IPS peers."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    proxied = ProxyFix(wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)
    if "*" in allowed:
        return proxied
    networks = [ipaddress.ip_network(item, strict=False) for item in allowed]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            peer = ipaddress.ip_address(environ.get("REMOTE_ADDR") or "")
        except ValueError:  # not an IP peer (a unix socket): trusted, as gunicorn does
            return proxied(environ, start_response)
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped:
            peer = peer.ipv4_mapped
        if any(peer in network for network in networks):
            return proxied(environ, start_response)
        return wsgi_app(environ, start_response)

    return app


def create_app(
    settings: Settings | None = None, *, storage: Any = None, upstream: Any = None
) -> Flask:
    """Build the WSGI app; services are made here once per process, or passed in by tests."""
    # Imported here, not at the top: gunicorn's master imports this package (see above).
    from flask import Flask

    from app.core import logs
    from app.core.config import Settings
    from app.core.storage_choice import make_storage
    from app.core.upstream_client import UpstreamClient
    from app.data import db
    from app.data.db import Database
    from app.http import (
        api,
        auth,
        devpi,
        errors,
        files,
        guard,
        health,
        metrics,
        provenance,
        serving,
        simple,
        stored_pages,
        upload,
        web,
    )
    from app.services import fulltext
    from app.services.indexer import IdleIndexer
    from app.services.mirror import Mirror
    from app.services.pagecache import PageCache

    settings = settings or Settings.from_env()
    logs.configure(settings)
    app = Flask(__name__)
    app.config["PYSHELF_SETTINGS"] = settings
    app.config["SECRET_KEY"] = load_secret_key(settings)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    # The cookie's Expires and signature age; the server-side row (app/http/auth.py) ends it too,
    # counted from login: so the cookie is not re-sent on every response (docs set none).
    app.config["PERMANENT_SESSION_LIFETIME"] = settings.session_lifetime_seconds
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    # Flask types app.json as the JSONProvider base; sort_keys is on the default one it builds
    app.json.sort_keys = False  # type: ignore[attr-defined]

    database = Database(settings.database_url)
    storage = storage or make_storage(settings)
    upstream = upstream or UpstreamClient.from_settings(settings)
    app.extensions["pyshelf.storage"] = storage
    app.extensions["pyshelf.upstream"] = upstream
    # What requests queue for search is indexed while the worker is idle (serving starts it).
    indexer = IdleIndexer(partial(fulltext.drain, database, storage))
    app.extensions["pyshelf.indexer"] = indexer
    app.extensions["pyshelf.mirror"] = Mirror(
        settings, database, storage, upstream, notes=simple.RequestNotes(), indexer=indexer
    )
    app.extensions["pyshelf.pages"] = PageCache(database)

    request_log = logs.RequestLog(app.wsgi_app, access_log=settings.access_log)
    request_log.arrivals.append(indexer.touch)
    request_log.observers.append(lambda _finished: indexer.touch())
    metrics.init_app(app, request_log)  # first: its before_request labels every request
    db.init_app(app, database)
    errors.init_app(app)
    serving.init_app(app)
    auth.init_app(app)
    devpi.init_app(app)
    upload.init_app(app)
    web.init_app(app)
    app.after_request(simple.stale_header)

    for module in (health, metrics, simple, files, guard, provenance, upload, api, devpi, web):
        app.register_blueprint(module.bp)
    # The request log is outermost, so it sees the client address that ProxyFix worked out.
    # Stored public pages and files skip Flask.
    stored = files.CachedFiles(app, stored_pages.CachedPages(app, app.wsgi_app))
    request_log.wsgi_app = trusted_proxy_fix(stored, settings.forwarded_allow_ips)
    # Flask's documented way to wrap its WSGI app; mypy refuses every assignment to a method
    app.wsgi_app = request_log  # type: ignore[method-assign]
    return app
