"""The checks of a server start before anything is created: every problem reported at once."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from app.core.config import ConfigError, Settings, mask_database_url
from app.core.locks import is_postgresql
from app.core.storage_choice import make_storage
from app.core.storage_s3 import S3Storage

REACH_TIMEOUT_SECONDS = 5  # for the database and the bucket to answer
# What pyshelf writes inside DATA_DIR (when they exist they must stay writable).
DATA_DIR_ENTRIES = ("pyshelf.sqlite3", "pyshelf.sqlite3-wal", "pyshelf.sqlite3-shm", "secret_key")
DATA_DIR_FOLDERS = ("blobs", "tmp", "locks")


def settings_for_start(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of a server start, or ConfigError naming every bad variable and its fix:
    the settings table, then DATA_DIR, TLS files, the port and what must answer; nothing is
    created or changed."""
    try:
        settings, bad, problems = Settings.from_env(environ), frozenset[str](), []
    except ConfigError as exc:
        if exc.settings is None:  # from_env always says what it could read
            raise
        settings, bad, problems = exc.settings, exc.bad, list(exc.problems)
    problems += start_problems(settings, bad)
    if problems:
        raise ConfigError(problems, settings, bad)
    return settings


def start_problems(settings: Settings, bad: frozenset[str] = frozenset()) -> list[str]:
    """What would stop a start of these settings (variables named in `bad` are skipped)."""
    problems: list[str] = []
    if "DATA_DIR" not in bad:
        problems += data_dir_problems(Path(settings.data_dir))
    if settings.storage_url.startswith("file:") and "STORAGE_URL" not in bad:
        problems += folder_problems("STORAGE_URL", settings.blob_dir)
    for name, path in (
        ("TLS_CERT", settings.tls_cert),
        ("TLS_KEY", settings.tls_key),
        ("UPSTREAM_CA_BUNDLE", settings.upstream_ca_bundle),
    ):
        if path and not (Path(path).is_file() and os.access(path, os.R_OK)):
            problems.append(
                f"{name}={path} is not a file readable by uid {os.getuid()}: "
                "fix the path or the file's owner and mode"
            )
    if not problems and settings.tls_cert and settings.tls_key:
        problems += _tls_problems(settings.tls_cert, settings.tls_key)
    if not {"HOST", "PORT"} & bad:
        problems += port_problems(settings.host, settings.port)
    checks: list[tuple[str, Callable[[], str | None]]] = []
    if "DATABASE_URL" not in bad and is_postgresql(settings.database_url):
        checks.append(("DATABASE_URL", lambda: _database_problem(settings.database_url)))
    if settings.uses_s3 and not {"STORAGE_URL", "S3_ENDPOINT_URL"} & bad:
        checks.append(("STORAGE_URL", lambda: _bucket_problem(settings)))
    problems += _answers_within(REACH_TIMEOUT_SECONDS, checks)
    return problems


def data_dir_problems(data_dir: Path) -> list[str]:
    """What stops pyshelf from creating or writing DATA_DIR, one line each with the fix."""
    problems = folder_problems("DATA_DIR", data_dir)
    if problems or not data_dir.is_dir():
        return problems
    uid, gid = os.getuid(), os.getgid()
    for name in DATA_DIR_ENTRIES + DATA_DIR_FOLDERS:
        path = Path(os.path.abspath(data_dir / name))
        if name in DATA_DIR_FOLDERS and path.exists() and not path.is_dir():
            problems.append(f"DATA_DIR: {path} is a file, not a folder: move it away")
        elif path.exists() and not os.access(path, os.W_OK | os.R_OK):
            problems.append(
                f"DATA_DIR: {path} is not writable by uid {uid}, which pyshelf runs as: "
                f"chown -R {uid}:{gid} {Path(os.path.abspath(data_dir))}"
            )
    return problems


def folder_problems(name: str, folder: Path) -> list[str]:
    """What stops this user from creating or writing `folder` (variable `name`), unchanged."""
    path = Path(os.path.abspath(folder))
    uid, gid = os.getuid(), os.getgid()
    if path.exists() and not path.is_dir():
        return [f"{name}={path} is a file, not a folder: point {name} at a folder"]
    existing = path
    while not existing.exists():  # the nearest ancestor that exists: it makes the folder
        existing = existing.parent
    if not existing.is_dir():
        return [
            f"{name}={path} cannot be made: {existing} is a file, not a folder; "
            f"point {name} at a folder"
        ]
    if os.access(existing, os.W_OK | os.X_OK):
        return []
    if _is_read_only(existing):
        return [f"{name}={path} is on a read-only file system: mount {existing} read-write"]
    if existing == path:
        return [
            f"{name}={path} is not writable by uid {uid}, which pyshelf runs as: "
            f"chown -R {uid}:{gid} {path}"
        ]
    return [
        f"{name}={path} does not exist and {existing} is not writable by uid {uid}: "
        f"mkdir -p {path} && chown {uid}:{gid} {path}"
    ]


def _is_read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def port_problems(host: str, port: int) -> list[str]:
    """Whether gunicorn could listen on HOST:PORT now (bound and released at once)."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        return [
            f"HOST={host}: not an address of this machine ({exc}); "
            "use 0.0.0.0 (every interface), 127.0.0.1 or one of this machine's addresses"
        ]
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            return [_bind_problem(host, port, exc)]
    return []


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"PORT={port}: {host}:{port} is already in use by another program "
            "(another pyshelf?): stop it, or choose another PORT"
        )
    if exc.errno == errno.EACCES:
        return (
            f"PORT={port}: a port below 1024 needs root or CAP_NET_BIND_SERVICE: "
            "use a port above 1023 (and map it, e.g. docker run -p 80:3141)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"HOST={host}: not an address of this machine: use 0.0.0.0 (every interface), "
            "127.0.0.1 or one of this machine's addresses"
        )
    return f"HOST={host}, PORT={port}: cannot listen there ({exc.strerror})"


def _tls_problems(cert: str, key: str) -> list[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty passphrase: a key that needs one fails here instead of prompting.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        return [
            f"TLS_CERT={cert}, TLS_KEY={key}: not a PEM certificate and its unencrypted "
            f"private key ({exc.strerror or exc}): fix the files"
        ]
    return []


def _database_problem(url: str) -> str | None:
    from sqlalchemy import create_engine  # only with PostgreSQL
    from sqlalchemy.pool import NullPool

    shown = mask_database_url(url)
    try:
        engine = create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": REACH_TIMEOUT_SECONDS}
        )
        with engine.connect():
            pass
    except Exception as exc:  # any failure is the operator's to fix: one line, no traceback
        return (
            f"DATABASE_URL={shown}: cannot connect ({_first_line(exc)}): start the database "
            "server, or fix the host, port, user, password or database name"
        )
    return None


def _bucket_problem(settings: Settings) -> str | None:
    from botocore.exceptions import BotoCoreError, ClientError  # only with S3: slow to import

    storage = make_storage(settings)
    assert isinstance(storage, S3Storage)
    try:
        storage.client.head_bucket(Bucket=storage.bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"STORAGE_URL={settings.storage_url}: no such bucket: create it first"
        return (
            f"STORAGE_URL={settings.storage_url}: the bucket refused access ({code}): check "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket's policy"
        )
    except BotoCoreError as exc:
        return (
            f"STORAGE_URL={settings.storage_url}: cannot reach the bucket ({_first_line(exc)}): "
            "check S3_ENDPOINT_URL, the AWS_* credentials and that the store is up"
        )
    return None


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    return lines[0].strip()


def _answers_within(
    seconds: float, checks: list[tuple[str, Callable[[], str | None]]]
) -> list[str]:
    """Run the checks side by side; one still waiting after `seconds` is a problem too."""
    results: dict[str, str | None] = {}

    def run(name: str, check: Callable[[], str | None]) -> None:
        try:
            results[name] = check()
        except Exception as exc:  # a client that cannot even be built: still one line
            results[name] = f"{name}: cannot check it ({_first_line(exc)})"

    threads = [
        threading.Thread(target=run, args=check, name=f"preflight-{check[0]}", daemon=True)
        for check in checks
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds + 1  # a second more than their own timeouts
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    problems = []
    for name, _check in checks:
        if name not in results:
            problems.append(f"{name}: no answer within {seconds} s: check that it is up")
        elif results[name]:
            problems.append(str(results[name]))
    return problems
