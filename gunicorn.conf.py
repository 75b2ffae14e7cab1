"""gunicorn settings from the environment (PORT, HOST, WEB_CONCURRENCY, THREADS, LOG_LEVEL)."""

import multiprocessing
import os
from pathlib import Path

from app.config import read_dotenv

_env = {**read_dotenv(Path(os.environ.get("ENV_FILE", ".env"))), **os.environ}

bind = f"{_env.get('HOST', '0.0.0.0')}:{_env.get('PORT', '3141')}"  # noqa: S104 - an appliance serves the LAN
workers = int(_env.get("WEB_CONCURRENCY") or min(2 * multiprocessing.cpu_count() + 1, 8))
worker_class = "gthread"  # file streaming is I/O-bound: threads keep workers responsive
threads = int(_env.get("THREADS") or 8)
timeout = int(_env.get("WORKER_TIMEOUT") or 120)  # seconds of silence before a worker is restarted
graceful_timeout = int(_env.get("GRACEFUL_TIMEOUT") or 30)  # SIGTERM: in-flight requests finish
keepalive = 5
preload_app = False  # each worker builds its own app: no connections shared across fork
loglevel = (_env.get("LOG_LEVEL") or "info").lower()
accesslog = "-" if _env.get("ACCESS_LOG", "true").lower() != "false" else None
errorlog = "-"
forwarded_allow_ips = _env.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
limit_request_line = 8190
control_socket_disable = True  # gunicorn's control socket would live in $HOME; nothing uses it
