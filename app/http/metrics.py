"""bp: GET /+metrics, the request counters' observer and the request-log marks.

The counters themselves are app/core/metrics.py's (the services count there too); a scrape adds
up every worker's (prometheus_client's multiprocess mode). Sizes that the database knows (blob
store, mirror cache) are read at scrape time.
"""

from __future__ import annotations

import hmac
import logging
import re
import shutil
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.logs import Finished, RequestLog
from app.core.metrics import CACHE_SERVED_BYTES, LATENCY, REGISTRY, REQUESTS, UPLOADS

# Re-exported: the blueprints count guard decisions and failed upload writes through this module.
from app.core.metrics import count_guard as count_guard
from app.core.metrics import count_write_failure as count_write_failure
from app.data.db import Database
from app.data.models import DocSet, File, Index, MirrorBlob, MirrorStats
from app.http.auth import REALM, authenticated_user
from app.http.errors import HTTPError
from app.services.indexes import is_public

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

INDEX_LABEL_RE = re.compile(rb'[{,]index="([^"]*)"')  # index paths never hold a quote

_KINDS = {"simple": "simple", "files": "file", "upload": "upload", "api": "api", "web": "web"}


def mark_cache_hit() -> None:
    """Note that this request is answered from the mirror cache (bytes counted at the end)."""
    g.pyshelf_cache_hit = True


def mark_guard(kind: str, detail: str | None = None) -> None:
    """Note that a supply-chain rule (`quarantined`, `vulnerable`, ...) changed this request's
    answer: its request log line names the rule and the detail (e.g. the advisory id)."""
    environ = request.environ
    earlier = environ.get("pyshelf.guard")  # several rules may change one page
    environ["pyshelf.guard"] = f"{earlier},{kind}" if earlier else kind
    if detail:
        before = environ.get("pyshelf.guard_detail")
        environ["pyshelf.guard_detail"] = f"{before}; {detail}" if before else detail


def route_kind(endpoint: str | None, view_args: dict[str, Any] | None) -> str:
    """A small, fixed set of labels for routes: simple, file, metadata, upload, api, docs, web."""
    if not endpoint:
        return "other"
    if endpoint in ("status", "health.status"):
        return "status"
    if endpoint.startswith("metrics."):
        return "metrics"
    blueprint, _, name = endpoint.partition(".")
    kind = _KINDS.get(blueprint, blueprint if name else "other")
    if kind == "file" and str((view_args or {}).get("filename", "")).endswith(".metadata"):
        return "metadata"
    if kind == "web" and "doc" in name:
        return "docs"
    return kind


def observe(finished: Finished) -> None:
    """Count a finished request (RequestLog observer)."""
    environ = finished.environ
    kind = environ.get("pyshelf.route_kind", "other")
    REQUESTS.labels(kind=kind, status=str(finished.status)).inc()
    LATENCY.labels(kind=kind).observe(finished.seconds)
    if environ.get("pyshelf.cache_hit") and finished.bytes_sent:
        CACHE_SERVED_BYTES.inc(finished.bytes_sent)
    if kind == "upload" and environ.get("REQUEST_METHOD") == "POST":
        UPLOADS.labels(status=str(finished.status)).inc()


class DatabaseCollector(Collector):
    """Sizes read from the database at scrape time: blob store, mirror cache, its cap."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Query a few sums; a database that does not answer yields no sizes."""
        try:
            with self.database.session() as session:
                upload_bytes = session.execute(
                    select(func.coalesce(func.sum(File.size), 0))
                ).scalar_one()
                doc_bytes = session.execute(
                    select(func.coalesce(func.sum(DocSet.size), 0))
                ).scalar_one()
                cache_bytes, cache_files = session.execute(
                    select(func.coalesce(func.sum(MirrorBlob.size), 0), func.count())
                ).one()
                stats = session.execute(
                    select(Index, MirrorStats).join(MirrorStats, MirrorStats.index_id == Index.id)
                ).all()
                upstream_ok = {
                    index.path: _upstream_ok(row.last_ok_at, row.last_error_at)
                    for index, row in stats
                }
        except Exception:
            log.exception("metrics: could not read sizes from the database")
            return
        blob_bytes = GaugeMetricFamily(
            "pyshelf_blob_store_bytes",
            "Bytes in the blob store by what they hold (from the database).",
            labels=["kind"],
        )
        blob_bytes.add_metric(["uploads"], float(upload_bytes))
        blob_bytes.add_metric(["docs"], float(doc_bytes))
        blob_bytes.add_metric(["mirror"], float(cache_bytes))
        yield blob_bytes
        yield GaugeMetricFamily(
            "pyshelf_mirror_cache_files", "Files in the mirror cache.", value=float(cache_files)
        )
        cap = self.settings.mirror_cache_max_bytes
        yield GaugeMetricFamily(
            "pyshelf_mirror_cache_max_bytes",
            "MIRROR_CACHE_MAX_SIZE in bytes (0: no cap).",
            value=float(cap or 0),
        )
        upstream = GaugeMetricFamily(
            "pyshelf_upstream_up",
            "1 when a mirror's last upstream request succeeded, 0 when it failed.",
            labels=["index"],
        )
        for path, is_ok in upstream_ok.items():
            if is_ok is not None:
                upstream.add_metric([path], 1.0 if is_ok else 0.0)
        yield upstream
        usage = shutil.disk_usage(self.settings.data_dir)
        yield GaugeMetricFamily(
            "pyshelf_data_dir_free_bytes",
            "Free bytes on the data directory's filesystem.",
            value=float(usage.free),
        )


def _upstream_ok(last_ok_at: Any, last_error_at: Any) -> bool | None:
    if last_error_at is None:
        return True if last_ok_at is not None else None
    return last_ok_at is not None and last_ok_at >= last_error_at


def render(settings: Settings, database: Database) -> bytes:
    """The text exposition of every metric: all workers' counters plus database sizes."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings, database))
    if settings.prometheus_multiproc_dir:
        # prometheus_client leaves this constructor unannotated (its package is otherwise typed)
        multiprocess.MultiProcessCollector(registry, path=settings.prometheus_multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(registry)


def has_metrics_token(settings: Settings) -> bool:
    """Whether the request carries `Authorization: Bearer <METRICS_TOKEN>` (and one is set)."""
    if not settings.metrics_token:
        return False
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {settings.metrics_token}"
    return hmac.compare_digest(given.encode(), expected.encode())


def _is_privileged(settings: Settings) -> bool:
    """Whether the caller sent the METRICS_TOKEN (as a bearer token) or is a superuser; refuse
    everyone else unless METRICS_PUBLIC."""
    if has_metrics_token(settings):
        return True
    try:
        user = authenticated_user()
    except HTTPError as exc:  # wrong credentials (a wrong METRICS_TOKEN too): not privileged
        if exc.status not in (401, 403):
            raise
        user = None
    if user is not None and user.is_superuser:
        return True
    if settings.metrics_public:
        return False
    if user is not None:
        raise HTTPError(403, f"Metrics are for superusers; the user '{user.username}' is not one.")
    challenge = 'Bearer realm="pyshelf metrics"' if settings.metrics_token else REALM
    raise HTTPError(
        401,
        "Metrics need a superuser's credentials or the METRICS_TOKEN (or METRICS_PUBLIC=true).",
        {"WWW-Authenticate": challenge},
    )


def without_private_indexes(body: bytes, public_paths: set[str]) -> bytes:
    """The exposition without the samples labelled with an index that is not public (or no
    longer exists): what an anonymous scrape may see."""
    kept = [
        line
        for line in body.splitlines(keepends=True)
        if (match := INDEX_LABEL_RE.search(line)) is None or match.group(1).decode() in public_paths
    ]
    return b"".join(kept)


@bp.get("/+metrics")
def metrics() -> Response:
    """Prometheus metrics (text format) for superusers and the METRICS_TOKEN; with
    METRICS_PUBLIC, for anyone, without the samples of indexes that are not public."""
    settings: Settings = current_app.config["PYSHELF_SETTINGS"]
    database = current_app.extensions["pyshelf.db"]
    is_privileged = _is_privileged(settings)
    body = render(settings, database)
    if not is_privileged:
        with database.session() as session:
            public = {i.path for i in session.scalars(select(Index)) if is_public(i)}
        body = without_private_indexes(body, public)
    response = Response(body, mimetype=None)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask, request_log: RequestLog) -> None:
    """Label each request with its route kind, and count requests when they finish."""
    request_log.observers.append(observe)

    @app.before_request
    def _label_route() -> None:
        request.environ["pyshelf.route_kind"] = route_kind(request.endpoint, request.view_args)

    @app.after_request
    def _note_cache_hit(response: Response) -> Response:
        if g.get("pyshelf_cache_hit"):
            request.environ["pyshelf.cache_hit"] = True
        return response
