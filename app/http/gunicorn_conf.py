"""gunicorn settings, from pyshelf's own (app/core/config.py): where to listen, workers, TLS,
logs."""

import multiprocessing
import os
from pathlib import Path
from typing import Any

from app.core.config import ConfigError, Settings

try:
    _settings = Settings.from_env()
except ConfigError as _exc:  # `prepare` reported it already; gunicorn must not start either
    raise SystemExit(f"pyshelf: {_exc}") from None

bind = f"{_settings.host}:{_settings.port}"
# One gthread worker runs Python on one CPU at a time and its threads carry the waiting (uploads,
# downloads, the upstream): one worker per CPU (at least 2, so one can restart while the other
# serves) keeps every CPU busy without the memory of idle extra workers.
workers = _settings.web_concurrency or max(2, min(multiprocessing.cpu_count(), 8))
# gunicorn's gthread worker (file streaming is I/O-bound: threads keep workers responsive), but
# each request is read whole on the worker's event loop before a thread sees it, as a buffering
# proxy would: a client sending slowly holds a socket, never a thread (app/http/serving.py).
worker_class = "app.http.serving.BufferingWorker"
threads = _settings.threads
timeout = _settings.worker_timeout_seconds  # of silence, before a worker is restarted
# SIGTERM (docker stop): stop accepting, let requests in flight finish for this many seconds,
# then exit 0. An upload cut off after that leaves only a temp file, removed at the next start.
graceful_timeout = _settings.graceful_timeout_seconds
keepalive = 5
preload_app = False  # each worker builds its own app: no connections shared across fork
loglevel = _settings.log_level.lower()
# The app logs one line per request itself (with its request id; ACCESS_LOG=false silences it),
# so gunicorn's own access log stays off.
accesslog = None
errorlog = "-"
# gunicorn's own lines in pyshelf's format (LOG_FORMAT: text with ISO 8601 UTC times, or JSON),
# through the root logger that the app's lines use too.
_formatter = (
    "app.core.logs.JsonFormatter"
    if _settings.log_format == "json"
    else "app.core.logs.TextFormatter"
)
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"pyshelf": {"()": _formatter}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "pyshelf",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": _settings.log_level, "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level, "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
    },
}

# Prometheus counters of all workers add up through files in one directory (multiprocess mode):
# it must be in the environment before a worker imports prometheus_client. `prepare` empties it.
_metrics_dir = Path(_settings.prometheus_multiproc_dir or _settings.metrics_dir)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)


# Only these peers may set X-Forwarded-Proto (here) and X-Forwarded-For/Host/Prefix (the app).
forwarded_allow_ips = ",".join(_settings.forwarded_allow_ips)
limit_request_line = 8190
control_socket_disable = True  # gunicorn's control socket would live in $HOME; nothing uses it

# Mounted below a path by a proxy that passes the full path (/pypi/...): gunicorn strips the
# SCRIPT_NAME it finds in its environment.
if _settings.script_name:
    os.environ["SCRIPT_NAME"] = _settings.script_name
else:
    os.environ.pop("SCRIPT_NAME", None)  # "" and "/" both mean the root

# HTTPS without a proxy: `prepare` checked that both files load (app/ops/preflight.py).
if _settings.tls_cert:
    certfile, keyfile = _settings.tls_cert, _settings.tls_key


def on_starting(server: object) -> None:
    """Create the metrics directory before the first worker starts."""
    _metrics_dir.mkdir(parents=True, exist_ok=True)


def post_worker_init(worker: Any) -> None:
    """In each worker, after the fork: keep copies of stored pages while PostgreSQL tells of
    changes (app/services/pagecache.py Watch; nothing on SQLite)."""
    worker.wsgi.extensions["pyshelf.pages"].watch_changes()


def child_exit(server: object, worker: Any) -> None:
    """A worker is gone: drop its live gauges (its counters keep counting in the sum)."""
    # Only here: imported at the top, before PROMETHEUS_MULTIPROC_DIR is set above, it would
    # pick its single-process mode for the workers the master forks.
    from prometheus_client import multiprocess

    # prometheus_client leaves mark_process_dead unannotated.
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
