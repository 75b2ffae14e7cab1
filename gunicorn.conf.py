"""gunicorn settings from the environment: HOST, PORT, TLS_*, WEB_CONCURRENCY, THREADS, timeouts."""

import multiprocessing
import os
from pathlib import Path

from app.config import ConfigError, Settings, read_dotenv

_env = {**read_dotenv(Path(os.environ.get("ENV_FILE", ".env"))), **os.environ}
try:
    _settings = Settings.from_env()
except ConfigError as _exc:  # `prepare` reported it already; gunicorn must not start either
    raise SystemExit(f"pyshelf: {_exc}") from None

bind = f"{_env.get('HOST') or '0.0.0.0'}:{_env.get('PORT') or '3141'}"  # noqa: S104 - an appliance serves the LAN
# One gthread worker runs Python on one CPU at a time and its threads carry the waiting (uploads,
# downloads, the upstream): one worker per CPU (at least 2, so one can restart while the other
# serves) keeps every CPU busy without the memory of idle extra workers.
workers = int(_env.get("WEB_CONCURRENCY") or max(2, min(multiprocessing.cpu_count(), 8)))
# gunicorn's gthread worker (file streaming is I/O-bound: threads keep workers responsive), but
# each request is read whole on the worker's event loop before a thread sees it, as a buffering
# proxy would: a client sending slowly holds a socket, never a thread (app/serving.py).
worker_class = "app.serving.BufferingWorker"
threads = int(_env.get("THREADS") or 8)
timeout = int(_env.get("WORKER_TIMEOUT") or 120)  # seconds of silence before a worker is restarted
# SIGTERM (docker stop): stop accepting, let requests in flight finish for this many seconds,
# then exit 0. An upload cut off after that leaves only a temp file, removed at the next start.
graceful_timeout = int(_env.get("GRACEFUL_TIMEOUT") or 30)
keepalive = 5
preload_app = False  # each worker builds its own app: no connections shared across fork
loglevel = (_env.get("LOG_LEVEL") or "info").lower()
# The app logs one line per request itself (with its request id; ACCESS_LOG=false silences it),
# so gunicorn's own access log stays off.
accesslog = None
errorlog = "-"
if _settings.log_format == "json":  # gunicorn's own lines as JSON too (app.logs.JsonFormatter)
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
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
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_settings.metrics_dir))


# Only these peers may set X-Forwarded-Proto (here) and X-Forwarded-For/Host/Prefix (the app).
forwarded_allow_ips = _env.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"
limit_request_line = 8190
control_socket_disable = True  # gunicorn's control socket would live in $HOME; nothing uses it

# Mounted below a path by a proxy that passes the full path (/pypi/...): gunicorn strips it.
if _settings.script_name:
    os.environ["SCRIPT_NAME"] = _settings.script_name
else:
    os.environ.pop("SCRIPT_NAME", None)  # "" and "/" both mean the root

# HTTPS without a proxy: both files or neither, readable by the user gunicorn runs as.
_tls = {name: _env.get(name, "").strip() for name in ("TLS_CERT", "TLS_KEY")}
if any(_tls.values()) and not all(_tls.values()):
    raise SystemExit("pyshelf: TLS_CERT and TLS_KEY go together: set both, or neither")
for _name, _path in _tls.items():
    if _path and not (Path(_path).is_file() and os.access(_path, os.R_OK)):
        raise SystemExit(f"pyshelf: {_name}={_path} is not a file readable by uid {os.getuid()}")
if all(_tls.values()):
    certfile, keyfile = _tls["TLS_CERT"], _tls["TLS_KEY"]


def on_starting(server: object) -> None:
    """Create the metrics directory before the first worker starts."""
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)


def child_exit(server: object, worker: object) -> None:
    """A worker is gone: drop its live gauges (its counters keep counting in the sum)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
