"""Restore a backup archive (app/ops/backup.py) into an empty data directory, checked first.

Everything is unpacked into a hidden folder inside DATA_DIR (the same filesystem, so moving into
place is a rename; in Docker the volume's parent is neither writable nor the same filesystem),
and every byte is checked against the manifest: the database's sha256, and each blob against
its name and the manifest's list. Only then are the database, blobs and secret key moved into
place. A target that is not empty is refused unless --force (stop the server first): the old
files are moved aside and removed once the new ones are in place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from app.core.config import Settings
from app.core.progress import Progress
from app.core.storage import StorageUnavailable
from app.core.storage_choice import make_storage
from app.core.storage_local import fsync_dir
from app.ops.backup import (
    BLOB_MEMBER_RE,
    CHUNK_BYTES,
    FORMAT,
    MANIFEST,
    PG_MEMBER,
    ROOT,
    SECRET_MEMBER,
    SQLITE_MEMBER,
    BackupError,
    database_kind,
    pg_env,
    sqlite_path,
)

log = logging.getLogger("pyshelf")

MAX_MANIFEST_BYTES = 512 << 20  # 512 MiB: millions of blobs; bounds memory on a bad archive
IGNORED_IN_TARGET = {"lost+found"}  # what an empty volume may hold anyway


@dataclass
class RestoreSummary:
    """What a restore put into place."""

    database: str
    blobs: int = 0
    bytes: int = 0
    left_out: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def restore(
    settings: Settings, source: Path, *, force: bool = False, progress: bool = True
) -> RestoreSummary:
    """Restore an archive into DATA_DIR (and DATABASE_URL); nothing moves until all is checked."""
    started = dt.datetime.now(dt.UTC)
    source = Path(source)
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    kind = database_kind(settings.database_url)
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for leftover in data_dir.glob(".restore-*"):  # of a restore that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    _check_target(settings, kind, force)
    # Inside the data directory: the same filesystem, so moving into place is a rename (a
    # Docker volume's parent, /, is neither writable nor the same filesystem).
    work = Path(tempfile.mkdtemp(dir=data_dir, prefix=".restore-"))
    summary = RestoreSummary(database=kind)
    try:
        manifest, hashes = _extract(source, work, progress)
        _check(manifest, hashes, kind, work, summary)
        _commit(settings, work, manifest, kind, force)
        summary.counts = _counts(settings)
        _index(settings, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary.seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return summary


def _target_entries(settings: Settings) -> list[Path]:
    data_dir = Path(settings.data_dir)
    entries = [
        entry
        for entry in data_dir.iterdir()
        if entry.name not in IGNORED_IN_TARGET and not entry.name.startswith(".restore-")
    ]
    if database_kind(settings.database_url) == "sqlite":
        database = sqlite_path(settings.database_url)
        if database.exists() and database.resolve().parent != data_dir.resolve():
            entries.append(database)
    blobs = settings.blob_dir
    is_outside = blobs.resolve().parent != data_dir.resolve()
    if is_outside and not settings.uses_s3 and blobs.is_dir() and any(blobs.iterdir()):
        entries.append(blobs)  # STORAGE_URL=file:///FOLDER elsewhere, holding blobs
    return entries


def _check_target(settings: Settings, kind: str, force: bool) -> None:
    entries = _target_entries(settings)
    if entries and not force:
        shown = ", ".join(sorted(e.name for e in entries)[:5])
        raise BackupError(
            f"{Path(settings.data_dir).resolve()} is not empty ({shown}): restore into an empty "
            "directory, or stop the server and use --force to replace its database and files"
        )
    if kind == "postgresql" and not force:
        engine = create_engine(settings.database_url)
        try:
            tables = inspect(engine).get_table_names()
        finally:
            engine.dispose()
        if tables:
            raise BackupError(
                f"the PostgreSQL database has {len(tables)} tables: restore into an empty "
                "database, or --force to replace them"
            )


def _members(source: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    try:
        with tarfile.open(source, "r|*") as tar:
            for member in tar:
                yield tar, member
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupError(f"{source} is not a readable backup archive: {exc}") from None


def _extract(source: Path, work: Path, progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Unpack the known members into `work`, hashing each; return (manifest, member -> sha256)."""
    bar = Progress("restore", source.stat().st_size) if progress else None
    manifest: dict[str, Any] | None = None
    hashes: dict[str, str] = {}
    for tar, member in _members(source):
        name = member.name
        if member.isdir() and (name == ROOT or name.startswith(ROOT + "/")):
            continue
        if not member.isfile():
            raise BackupError(f"unexpected entry {name!r} in the archive (not a regular file)")
        if name in hashes or (name == MANIFEST and manifest is not None):
            raise BackupError(f"{name!r} is in the archive twice")
        blob = BLOB_MEMBER_RE.match(name)
        if name == MANIFEST:
            if member.size > MAX_MANIFEST_BYTES:
                raise BackupError("the manifest is implausibly large")
            extracted = tar.extractfile(member)
            assert extracted is not None
            try:
                manifest = json.loads(extracted.read())
            except ValueError as exc:
                raise BackupError(f"the manifest is not JSON: {exc}") from None
            continue
        if blob:
            first, second, key = blob.groups()
            if key[:2] != first or key[2:4] != second:
                raise BackupError(f"blob {name!r} is filed under the wrong folder")
            target = work / "blobs" / first / second / key
        elif name in (SQLITE_MEMBER, PG_MEMBER):
            target = work / Path(name).name
        elif name == SECRET_MEMBER:
            target = work / "secret_key"
        else:
            raise BackupError(f"unexpected entry {name!r} in the archive")
        target.parent.mkdir(parents=True, exist_ok=True)
        extracted = tar.extractfile(member)
        assert extracted is not None
        digest = hashlib.sha256()
        with open(target, "wb") as out:
            while chunk := extracted.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                if bar:
                    bar.advance(len(chunk))
        hashes[name] = digest.hexdigest()
    if bar:
        bar.finish()
    if manifest is None:
        raise BackupError("the archive has no manifest.json: not a pyshelf backup, or cut short")
    return manifest, hashes


def _check(
    manifest: dict[str, Any],
    hashes: dict[str, str],
    kind: str,
    work: Path,
    summary: RestoreSummary,
) -> None:
    """Every byte against the manifest, before anything is committed."""
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r} is not {FORMAT}")
    database = manifest.get("database") or {}
    if database.get("kind") != kind:
        raise BackupError(
            f"the backup holds a {database.get('kind')} database but DATABASE_URL is {kind}: "
            "restore into the same kind of database"
        )
    if hashes.get(database.get("member", "")) != database.get("sha256"):
        raise BackupError("the database in the archive does not match its sha256: not restored")
    blobs: dict[str, dict[str, Any]] = manifest.get("blobs") or {}
    left_out: dict[str, str] = manifest.get("left_out") or {}
    bad: list[str] = []
    for name, digest in hashes.items():
        blob = BLOB_MEMBER_RE.match(name)
        if not blob:
            continue
        key = blob.group(3)
        if key in left_out:  # a mirror file found corrupt while the backup was written
            (work / "blobs" / key[:2] / key[2:4] / key).unlink()
            continue
        if key not in blobs:
            bad.append(f"{key[:12]} is not in the manifest")
        elif digest != key:
            bad.append(f"{key[:12]} hashes to {digest[:12]}")
    missing = [key for key in blobs if f"{ROOT}/blobs/{key[:2]}/{key[2:4]}/{key}" not in hashes]
    bad += [f"{key[:12]} ({blobs[key].get('kind')}) is missing" for key in missing]
    if bad:
        raise BackupError(
            f"{len(bad)} blobs fail the manifest, nothing was restored: " + "; ".join(bad[:5])
        )
    summary.blobs = len(blobs)
    summary.bytes = sum(int(b.get("size", 0)) for b in blobs.values())
    summary.left_out = len(left_out)


def _commit(
    settings: Settings, work: Path, manifest: dict[str, Any], kind: str, force: bool
) -> None:
    """Move the checked files into place (the old ones aside first, with --force)."""
    data_dir = Path(settings.data_dir)
    old = work / "old"
    old.mkdir()
    if settings.uses_s3:  # the blobs first: the database must never name a blob not there yet
        _upload_blobs(settings, work / "blobs")
    os.sync()  # everything unpacked is on disk before it becomes the live data
    if kind == "sqlite":
        database = sqlite_path(settings.database_url)
        if force:
            for suffix in ("", "-wal", "-shm", "-journal"):
                current = Path(f"{database}{suffix}")
                if current.exists():
                    shutil.move(current, old / f"{secrets.token_hex(4)}{current.name}")
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(work / "database.sqlite3", database)
        _forget_left_out(database, manifest.get("left_out") or {})
    else:
        files = [work / "database.sql"]
        if force:  # tables the dump does not know (a newer schema) go too, in the same transaction
            files.insert(0, _drop_tables_script(settings.database_url, work / "drop.sql"))
        command = [
            "psql",
            "--quiet",
            "--no-psqlrc",
            "--single-transaction",
            "-v",
            "ON_ERROR_STOP=1",
            *(f"--file={file}" for file in files),
        ]
        try:
            subprocess.run(  # noqa: S603 - fixed arguments, no shell
                command,
                env=pg_env(settings.database_url),
                check=True,
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            raise BackupError("psql is not installed (apt-get install postgresql-client)") from None
        except subprocess.CalledProcessError as exc:
            raise BackupError(f"psql failed, database unchanged: {exc.stderr.strip()}") from None
        _forget_left_out_pg(settings.database_url, manifest.get("left_out") or {})
    # STORAGE_URL=file:///FOLDER may keep the blobs outside DATA_DIR (then moved, not renamed).
    for name, current in (("blobs", settings.blob_dir), ("secret_key", data_dir / "secret_key")):
        if current.exists() and force:
            shutil.move(current, old / name)
        if (work / name).exists():
            shutil.move(work / name, current)
    if not settings.uses_s3:
        settings.blob_dir.mkdir(parents=True, exist_ok=True)
    fsync_dir(data_dir)


def _upload_blobs(settings: Settings, folder: Path) -> None:
    """Put the checked blobs into the S3 bucket (those already there are kept), then drop them."""
    storage = make_storage(settings)
    for path in sorted(folder.glob("??/??/*")) if folder.is_dir() else []:
        try:
            storage.commit_temp(path.name, path)
        except StorageUnavailable as exc:
            raise BackupError(f"{exc}; nothing was restored") from None
    shutil.rmtree(folder, ignore_errors=True)


def _drop_tables_script(url: str, path: Path) -> Path:
    """SQL that drops every table of the target database (restore --force, PostgreSQL)."""
    engine = create_engine(url)
    try:
        tables = inspect(engine).get_table_names()
        quote = engine.dialect.identifier_preparer.quote
    finally:
        engine.dispose()
    path.write_text("".join(f"DROP TABLE IF EXISTS {quote(name)} CASCADE;\n" for name in tables))
    return path


def _forget_left_out(database: Path, left_out: dict[str, str]) -> None:
    """Mirror files not in the archive are no longer cached: drop their accounting rows."""
    if not left_out:
        return
    connection = sqlite3.connect(database)
    try:
        with connection:
            connection.executemany(
                "DELETE FROM mirror_blobs WHERE sha256 = ?", [(key,) for key in left_out]
            )
    except sqlite3.OperationalError:  # a backup from before mirror_blobs existed
        pass
    finally:
        connection.close()


def _forget_left_out_pg(url: str, left_out: dict[str, str]) -> None:
    if not left_out:
        return
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for key in left_out:
                connection.execute(
                    text("DELETE FROM mirror_blobs WHERE sha256 = :key"), {"key": key}
                )
    finally:
        engine.dispose()


def _index(settings: Settings, progress: bool) -> None:
    """Migrate the restored database and, when its backup predates the search index, build
    the index (a newer backup holds a consistent one: the database is copied as a whole)."""
    # Imported here: alembic and the search index are needed only once the files are in place.
    from app.ops.prepare import migrate
    from app.services.fulltext import rebuild

    migrate(settings)
    rebuild(settings, progress=progress, only_if_empty=True)


def _counts(settings: Settings) -> dict[str, int]:
    """How many users, tokens, indexes, files and doc sets the restored database holds."""
    engine = create_engine(settings.database_url)
    counts: dict[str, int] = {}
    try:
        with engine.connect() as connection:
            for table in ("users", "tokens", "indexes", "files", "doc_sets"):
                counts[table] = int(connection.scalar(text(f"SELECT count(*) FROM {table}")))  # noqa: S608
    finally:
        engine.dispose()
    return counts
