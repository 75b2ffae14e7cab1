"""Hot backup: one tar archive of the database and its blobs (app/ops/restore.py reads it).

A backup is consistent while the server keeps serving: the database is snapshotted first
(SQLite's online backup API, or `pg_dump` inside an exported snapshot for PostgreSQL), then
the blobs that snapshot references are copied. Blobs are immutable and named by their sha256,
and uploads store a blob before they commit its row, so every row in the snapshot finds its
blob. Mirror-cached files are optional: one that is gone (evicted meanwhile) is left out and
named in the manifest, and the restored mirror fetches it again on demand.

Archive (uncompressed tar): `pyshelf-backup/` with `database.sqlite3` (or `database.sql`),
`secret_key`, `blobs/ab/cd/<sha256>` and, last, `manifest.json` (format, database hash, every
blob with its size and kind, what was left out). Restore checks every byte against it before
it moves anything into place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.progress import Progress
from app.core.storage import Storage
from app.core.storage_choice import make_storage
from app.core.storage_local import fsync_dir
from app.ops.integrity import Refs, blob_references
from app.ops.prepare import OperationError
from app.services.cache_blobs import BlobLock

log = logging.getLogger("pyshelf")

FORMAT = 1
ROOT = "pyshelf-backup"
MANIFEST = f"{ROOT}/manifest.json"
SQLITE_MEMBER = f"{ROOT}/database.sqlite3"
PG_MEMBER = f"{ROOT}/database.sql"
SECRET_MEMBER = f"{ROOT}/secret_key"
BLOB_MEMBER_RE = re.compile(rf"^{ROOT}/blobs/([0-9a-f]{{2}})/([0-9a-f]{{2}})/([0-9a-f]{{64}})$")
CHUNK_BYTES = 1 << 20
ARCHIVE_MODE = 0o600  # for the owner only: an archive holds the secret key and the database


class BackupError(OperationError):
    """A backup or restore cannot go on; the message says why and what to do."""


@dataclass
class BackupSummary:
    """What a backup wrote."""

    path: Path
    database: str
    blobs: int = 0
    bytes: int = 0
    left_out: dict[str, str] = field(default_factory=dict)  # sha256 -> why (mirror files only)
    seconds: float = 0.0


WORK_PREFIX = ".pyshelf-backup-work."  # + pid: a killed backup's folder is removed by the next


def database_kind(url: str) -> str:
    """'sqlite' or 'postgresql' (the two a backup knows), else BackupError."""
    backend = make_url(url).get_backend_name()
    if backend in ("sqlite", "postgresql"):
        return backend
    raise BackupError(f"backup knows SQLite and PostgreSQL, not {backend} (DATABASE_URL)")


def sqlite_path(url: str) -> Path:
    """The database file of a SQLite URL."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("DATABASE_URL names no SQLite file")
    return Path(database)


class _HashingReader:
    """Reads a file for tarfile while hashing it and advancing a progress bar."""

    def __init__(self, source: IO[bytes], progress: Progress | None) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.digest.update(chunk)
        if self.progress is not None:
            self.progress.advance(len(chunk))
        return chunk


# --- backup ----------------------------------------------------------------------------------


def backup(
    settings: Settings,
    target: Path | str,
    *,
    with_mirror_files: bool = True,
    force: bool = False,
    progress: bool = True,
) -> BackupSummary:
    """Write a consistent archive of the database and its blobs to `target` (a file or a folder)."""
    started = dt.datetime.now(dt.UTC)
    kind = database_kind(settings.database_url)
    path = Path(target)
    is_folder = str(target).endswith(("/", os.sep)) or path.is_dir()
    folder = path if is_folder else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {folder}: {exc.strerror}") from None
    if is_folder:
        path = path / f"pyshelf-{started:%Y%m%d-%H%M%S}.tar"
    if path.exists() and not force:
        raise BackupError(f"{path} exists: choose another name, or --force to replace it")
    storage = make_storage(settings)
    _remove_abandoned_work(path.parent)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{WORK_PREFIX}{os.getpid()}."))
    summary = BackupSummary(path=path, database=kind)
    try:
        # Held shared from the snapshot to the last blob: eviction and orphan removal delete no
        # blob meanwhile (they wait, or try again later); uploads go on.
        with BlobLock(settings).shared():
            _backup_into(work, path, settings, storage, kind, with_mirror_files, summary, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary.seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return summary


def _remove_abandoned_work(folder: Path) -> None:
    """Remove work folders of backups that were killed: they hold a copy of the database."""
    for work in folder.glob(f"{WORK_PREFIX}*"):
        try:
            pid = int(work.name[len(WORK_PREFIX) :].split(".")[0])
            os.kill(pid, 0)
        except ValueError:
            continue  # not ours
        except ProcessLookupError:
            shutil.rmtree(work, ignore_errors=True)
        except PermissionError:
            continue  # a live process of another user


def _backup_into(
    work: Path,
    path: Path,
    settings: Settings,
    storage: Storage,
    kind: str,
    with_mirror_files: bool,
    summary: BackupSummary,
    progress: bool,
) -> None:
    if kind == "sqlite":
        database_file = work / "database.sqlite3"
        revision, refs = _sqlite_snapshot(sqlite_path(settings.database_url), database_file)
        member = SQLITE_MEMBER
    else:
        database_file = work / "database.sql"
        revision, refs = _pg_snapshot(settings.database_url, database_file)
        member = PG_MEMBER
    blobs = _plan(refs, storage, with_mirror_files, summary)
    archive = work / "archive.tar"
    database = {"kind": kind, "member": member, "alembic_revision": revision}
    _write_archive(archive, settings, storage, database_file, database, blobs, summary, progress)
    os.replace(archive, path)
    fsync_dir(path.parent)


def _sqlite_snapshot(source: Path, snapshot: Path) -> tuple[str | None, Refs]:
    """Copy the live database with SQLite's online backup API; read its blob references."""
    if not source.is_file():
        raise BackupError(f"no database at {source}: is DATA_DIR right?")
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(snapshot)
    try:
        src.backup(dst)  # one step: a consistent snapshot, writers go on meanwhile (WAL)
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
    finally:
        src.close()
        dst.close()
    engine = create_engine(f"sqlite:///{snapshot}")
    try:
        with Session(engine) as session:
            return _revision(session.connection()), blob_references(session)
    finally:
        engine.dispose()


def _revision(connection: Connection) -> str | None:
    try:
        return connection.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception:
        return None


def pg_env(url: str) -> dict[str, str]:
    """libpq's variables for a URL: the password never shows in the process list."""
    parsed = make_url(url)
    query = {k: v if isinstance(v, str) else v[-1] for k, v in parsed.query.items()}
    values = {
        "PGHOST": parsed.host or query.get("host"),  # ?host=/run/postgresql: a unix socket
        "PGPORT": str(parsed.port) if parsed.port else query.get("port"),
        "PGUSER": parsed.username,
        "PGPASSWORD": parsed.password,
        "PGDATABASE": parsed.database,
        "PGSSLMODE": query.get("sslmode"),
    }
    # The child gets our environment (PATH, locale) plus these; nothing is read from it here.
    return {**os.environ, **{k: v for k, v in values.items() if v}}


def _pg_snapshot(url: str, dump: Path) -> tuple[str | None, Refs]:
    """pg_dump inside an exported snapshot, and the references read in that same snapshot."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                snapshot = connection.scalar(text("SELECT pg_export_snapshot()"))
                command = [
                    "pg_dump",
                    "--format=plain",
                    "--no-owner",
                    "--no-privileges",
                    "--clean",
                    "--if-exists",
                    f"--snapshot={snapshot}",
                    f"--file={dump}",
                ]
                try:
                    subprocess.run(  # noqa: S603 - fixed arguments, no shell
                        command, env=pg_env(url), check=True, capture_output=True, text=True
                    )
                except FileNotFoundError:
                    raise BackupError(
                        "pg_dump is not installed (apt-get install postgresql-client)"
                    ) from None
                except subprocess.CalledProcessError as exc:
                    raise BackupError(f"pg_dump failed: {exc.stderr.strip()}") from None
                with Session(bind=connection) as session:
                    return _revision(connection), blob_references(session)
    finally:
        engine.dispose()


def _plan(
    refs: Refs, storage: Storage, with_mirror_files: bool, summary: BackupSummary
) -> dict[str, str]:
    """sha256 -> kind of every blob to copy; private blobs must all be there."""
    blobs = {key: "private" for key in refs.private}
    missing = [key for key in blobs if not storage.exists(key)]
    if missing:
        shown = ", ".join(f"{refs.private[k]} ({k[:12]})" for k in missing[:5])
        raise BackupError(
            f"{len(missing)} uploaded files are missing from the blob store ({shown}); "
            "run `entrypoint.sh verify` to see the damage"
        )
    cached = set(refs.mirror) | {key for key in refs.listed if storage.exists(key)}
    for key in sorted(cached - set(blobs)):
        if not with_mirror_files:
            summary.left_out[key] = "omitted"
        elif storage.exists(key):
            blobs[key] = "mirror"
        else:
            summary.left_out[key] = "missing"
    return blobs


def _write_archive(
    archive: Path,
    settings: Settings,
    storage: Storage,
    database_file: Path,
    database: dict[str, Any],
    blobs: dict[str, str],
    summary: BackupSummary,
    progress: bool,
) -> None:
    sizes: dict[str, int] = {}
    for key in list(blobs):
        try:
            sizes[key] = storage.size(key)
        except FileNotFoundError:  # removed by hand since the plan
            if blobs[key] == "private":
                raise BackupError(f"uploaded blob {key} vanished during the backup") from None
            del blobs[key]
            summary.left_out[key] = "missing"
    total = database_file.stat().st_size + sum(sizes.values())
    bar = Progress("backup", total) if progress else None
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "database": {},
        "blobs": {},
        "left_out": summary.left_out,
    }
    # 0600 whatever the umask (in-process callers) and the folder: it holds the secret key.
    with open(os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ARCHIVE_MODE), "wb") as out:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            with open(database_file, "rb") as source:
                digest = _add(tar, database["member"], source, bar)
            manifest["database"] = {
                **database,
                "sha256": digest,
                "size": database_file.stat().st_size,
            }
            secret = Path(settings.data_dir) / "secret_key"
            if secret.is_file():
                with open(secret, "rb") as secret_file:
                    _add(tar, SECRET_MEMBER, secret_file, None)
                manifest["secret_key"] = True
            for key, kind in blobs.items():
                try:
                    source = storage.open(key)
                except FileNotFoundError:
                    if kind == "private":
                        raise BackupError(
                            f"uploaded blob {key} vanished during the backup"
                        ) from None
                    summary.left_out[key] = "missing"
                    continue
                with source:
                    name = f"{ROOT}/blobs/{key[:2]}/{key[2:4]}/{key}"
                    digest = _add(tar, name, source, bar, sizes[key])
                if digest != key:
                    if kind == "private":
                        raise BackupError(
                            f"blob {key} is corrupt on disk (its bytes hash to {digest}); "
                            "run `entrypoint.sh verify`"
                        )
                    summary.left_out[key] = "corrupt"  # restore skips the member
                    continue
                manifest["blobs"][key] = {"size": sizes[key], "kind": kind}
                summary.blobs += 1
                summary.bytes += sizes[key]
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(dt.datetime.now().timestamp()), 0o644
            tar.addfile(info, _BytesReader(data))
        out.flush()
        os.fsync(out.fileno())
    if bar:
        bar.finish()


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk, self.offset = self.data[self.offset : end], min(end, len(self.data))
        return chunk


def _add(
    tar: tarfile.TarFile, name: str, source: IO[bytes], bar: Progress | None, size: int = -1
) -> str:
    """Add an open file (or a stream of `size` bytes: S3) as `name`; return its sha256."""
    if size < 0:
        stat = os.fstat(source.fileno())
        size, mtime = stat.st_size, int(stat.st_mtime)
    else:
        mtime = int(dt.datetime.now().timestamp())
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    reader = _HashingReader(source, bar)
    tar.addfile(info, reader)
    return reader.digest.hexdigest()
