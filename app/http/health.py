"""bp: GET /+status, the health of this server as JSON (load balancers, Docker HEALTHCHECK).

Healthy (200) when the database answers, the data directory (and an S3 blob store) takes a new
file, and the disk has more than STATUS_MIN_FREE_SPACE free; otherwise 503. Each mirror's
upstream is reported from its last real request (MirrorStats), never probed here: an upstream
that is down makes the status "degraded" but keeps the 200, since the mirror goes on serving
its cache and restarting the container would not bring the upstream back. The list leaves out
mirrors the caller may not read (an anonymous probe sees the public ones): their names are private.

Error texts (an upstream's failure, a database or directory error) may name internal hosts,
ports and paths: only superusers and callers with the METRICS_TOKEN see them; anyone else gets
the state words and ok flags, which is all a load balancer or HEALTHCHECK needs.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from app import __version__
from app.core.config import Settings
from app.data.db import Database
from app.data.models import Index, MirrorStats
from app.http.auth import authenticated_user, current_reader
from app.http.metrics import has_metrics_token
from app.services.indexes import may_read

bp = Blueprint("health", __name__)


def _iso(value: dt.datetime | None) -> str | None:
    return value.replace(tzinfo=dt.UTC).isoformat() if value is not None else None


def check_database(database: Database) -> dict[str, Any]:
    """Whether a query goes through."""
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return {"ok": False, "error": str(exc).splitlines()[0][:200]}
    return {"ok": True}


def check_writable(directories: list[Path]) -> dict[str, Any]:
    """Whether each directory takes a new file (created and removed again)."""
    for directory in directories:
        try:
            fd, name = tempfile.mkstemp(dir=directory, prefix=".status-")
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            return {"ok": False, "error": f"{directory}: {exc.strerror or exc}"}
    return {"ok": True}


def check_disk(settings: Settings) -> dict[str, Any]:
    """Free bytes on the data directory's filesystem, against STATUS_MIN_FREE_SPACE."""
    try:
        usage = shutil.disk_usage(settings.data_dir)
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc)}
    return {
        "ok": usage.free >= settings.status_min_free_bytes,
        "free_bytes": usage.free,
        "total_bytes": usage.total,
        "min_free_bytes": settings.status_min_free_bytes,
    }


def mirror_upstreams(database: Database) -> dict[str, dict[str, Any]]:
    """Each mirror index's upstream as its last request found it: ok, failing or unknown."""
    mirrors: dict[str, dict[str, Any]] = {}
    with database.session() as session:
        rows = session.execute(
            select(Index, MirrorStats)
            .outerjoin(MirrorStats, MirrorStats.index_id == Index.id)
            .where(Index.type == "mirror")
        ).all()
        for index, stats in rows:
            last_ok = stats.last_ok_at if stats else None
            last_error_at = stats.last_error_at if stats else None
            if last_ok is None and last_error_at is None:
                state = "unknown"  # nothing asked of it since it was set up
            elif last_error_at is None or (last_ok is not None and last_ok >= last_error_at):
                state = "ok"
            else:
                state = "failing"
            mirrors[index.path] = {
                "upstream": state,
                "last_ok_at": _iso(last_ok),
                "last_error": stats.last_error if stats and state == "failing" else None,
                "last_error_at": _iso(last_error_at),
            }
    return mirrors


def status_report(
    settings: Settings, database: Database, storage: Any = None
) -> tuple[dict[str, Any], bool]:
    """The whole report, and whether this server is healthy."""
    checks = {
        "database": check_database(database),
        "data_dir": check_writable(
            [d for d in (Path(settings.data_dir), settings.blob_dir) if d.is_dir()]
            or [Path(settings.data_dir)]
        ),
        "disk": check_disk(settings),
    }
    remote_check = getattr(storage, "check_writable", None)
    if remote_check is not None:  # S3: a tiny object put and deleted again
        checks["blob_store"] = remote_check()
    healthy = all(check["ok"] for check in checks.values())
    mirrors: dict[str, dict[str, Any]] = {}
    if checks["database"]["ok"]:
        try:
            mirrors = mirror_upstreams(database)
        except Exception as exc:  # a half-migrated database: report, don't fail the probe twice
            checks["database"] = {"ok": False, "error": str(exc).splitlines()[0][:200]}
            healthy = False
    failing = any(m["upstream"] == "failing" for m in mirrors.values())
    state = "ok" if healthy and not failing else "degraded" if healthy else "unhealthy"
    report = {"status": state, "version": __version__, "checks": checks, "mirrors": mirrors}
    return report, healthy


def without_error_texts(report: dict[str, Any]) -> dict[str, Any]:
    """The report as anonymous callers see it: states and flags, no error text."""
    checks = {
        name: {k: v for k, v in check.items() if k != "error"}
        for name, check in report["checks"].items()
    }
    mirrors = {
        path: {k: v for k, v in mirror.items() if k != "last_error"}
        for path, mirror in report["mirrors"].items()
    }
    return {**report, "checks": checks, "mirrors": mirrors}


def _is_superuser() -> bool:
    user = authenticated_user()
    return user is not None and user.is_superuser


def _readable_mirrors(database: Database, paths: list[str]) -> set[str]:
    """Which of these mirror paths the caller may read (none if the database fails now)."""
    if not paths:
        return set()
    try:
        reader = current_reader()  # may read the database too (a session cookie's user)
        with database.session() as session:
            mirrors = session.scalars(select(Index).where(Index.type == "mirror")).all()
            return {i.path for i in mirrors if i.path in paths and may_read(i, reader)}
    except SQLAlchemyError:
        return set()


@bp.get("/+status")
def status() -> Response:
    """Health as JSON: 200 when healthy, 503 otherwise; only the mirrors the caller may read,
    and error texts for superusers and the METRICS_TOKEN only."""
    settings: Settings = current_app.config["PYSHELF_SETTINGS"]
    database = current_app.extensions["pyshelf.db"]
    report, healthy = status_report(settings, database, current_app.extensions["pyshelf.storage"])
    # The METRICS_TOKEN is a monitor's credential, not a user's: it sees every mirror and error.
    if not has_metrics_token(settings):
        shown = _readable_mirrors(database, list(report["mirrors"]))
        report["mirrors"] = {path: m for path, m in report["mirrors"].items() if path in shown}
        if not _is_superuser():
            report = without_error_texts(report)
    response = jsonify(report)
    response.status_code = 200 if healthy else 503
    response.headers["Cache-Control"] = "no-store"
    return response
