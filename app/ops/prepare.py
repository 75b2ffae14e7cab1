"""What a start needs before it serves, below the CLI: the data directory checked, the schema
migrated, the configured users and indexes bootstrapped; and the error every operation raises."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import initial_password
from app.core.config import Settings
from app.core.locks import Locks
from app.core.upstream import mask_url
from app.data import schema
from app.data.db import make_engine
from app.data.models import User
from app.data.schema import MIGRATIONS_DIR
from app.ops.preflight import data_dir_problems
from app.services.indexes import get_index_by_path
from app.services.indexes_config import create_index
from app.services.passwords import hash_password, password_matches

log = logging.getLogger("pyshelf")

MIRROR_INDEX = ("root", "pypi")
STAGE_INDEX = "dev"
TMP_MAX_AGE_SECONDS = 3600  # leftovers of killed uploads/downloads older than this are removed
MIGRATE_WAIT_SECONDS = 600  # how long a start waits for another replica's migration
# New files and folders for this user only: DATA_DIR holds the secret key that signs sessions,
# the database and private packages, and backups hold all three. (entrypoint.sh sets it too.)
PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700


class OperationError(Exception):
    """An admin operation failed for a reason the admin can act on: the CLI prints it, exit 1."""


class PrepareError(OperationError):
    """The data directory or the database is not ready, and the message says how to fix it."""


def check_data_dir(settings: Settings) -> None:
    """The data directory must exist (or be creatable) and be writable by this user."""
    data_dir = Path(settings.data_dir)
    problems = data_dir_problems(data_dir)
    if problems:
        raise PrepareError("; ".join(problems))
    try:
        data_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        uid, gid = os.getuid(), os.getgid()
        raise PrepareError(
            f"data directory {data_dir.resolve()} is not writable by uid {uid} ({exc.strerror}); "
            f"fix it with: chown -R {uid}:{gid} {data_dir.resolve()}"
        ) from None
    for sub in (settings.tmp_dir, *([] if settings.uses_s3 else [settings.blob_dir])):
        sub.mkdir(parents=True, exist_ok=True)


def make_data_dir_private(settings: Settings) -> None:
    """Make DATA_DIR 0700 when this user owns it and others may enter it, saying so; a folder
    of another owner is left as it is (`verify` names what others may read)."""
    data_dir = Path(settings.data_dir)
    info = data_dir.stat()
    if info.st_uid != os.getuid() or not info.st_mode & 0o077:
        return
    data_dir.chmod(PRIVATE_DIR_MODE)
    log.warning(
        "DATA_DIR %s was open to other users (mode %o); made it %o: it holds the secret key,"
        " the database and private packages",
        data_dir.resolve(),
        info.st_mode & 0o777,
        PRIVATE_DIR_MODE,
    )


def clean_tmp(settings: Settings) -> int:
    """Remove temp files that killed workers left behind; they are never served."""
    removed = 0
    cutoff = time.time() - TMP_MAX_AGE_SECONDS
    for root in (settings.tmp_dir, settings.blob_dir / ".tmp"):
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
    return removed


def migrate(settings: Settings) -> None:
    """Bring the database schema up to the head revision: nothing to do at head (alembic is not
    even loaded), one step for a new database, alembic's migrations for an older one."""
    head = schema.head_revision()
    engine = make_engine(settings.database_url)
    # Replicas starting at once share one database: one migrates, the others wait and then
    # find nothing to do. (Bootstrap needs no such lock: it runs under begin_write.) Even the
    # first look waits: two first connections to a new SQLite file would race to set WAL.
    lock = Locks.of(settings).exclusive("schema")
    try:
        if not lock.try_acquire():
            log.info("waiting for another pyshelf process to finish migrating the database")
            if not lock.acquire(MIGRATE_WAIT_SECONDS):
                raise PrepareError(
                    f"another pyshelf process held the migration lock for {MIGRATE_WAIT_SECONDS}"
                    " s; is a migration stuck? Stop the other servers and try again"
                )
        with engine.begin() as connection:
            revision = schema.current_revision(connection)
            is_new = revision is None and schema.is_empty(connection)
            if is_new:
                schema.create_schema(connection, head)
        if is_new:
            log.info("created the database schema (revision %s)", head)
        elif revision != head:
            _alembic_upgrade(settings)
    finally:
        lock.close()
        engine.dispose()
    log.info("database schema is up to date")


def _alembic_upgrade(settings: Settings) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line of ours instead of ten
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = settings.database_url
    command.upgrade(config, "head")


def find_user(session: Session, username: str) -> User | None:
    """The user of this name, or None."""
    return session.scalar(select(User).where(User.username == username))


def is_first_start(session: Session) -> bool:
    """Whether the database has no user yet: nothing was ever started or imported here."""
    return session.scalar(select(User.id).limit(1)) is None


def bootstrap(session: Session, settings: Settings, out: Any = None) -> list[str]:
    """Create the admin user, root/pypi and ADMIN_USER/dev on an empty database; on a later
    start apply a changed ADMIN_PASSWORD and log what else in the environment the database
    overrides. Returns what changed, for the log."""
    if is_first_start(session):
        changes = _first_start(session, settings)
    else:
        changes = _later_start(session, settings)
    show_initial_password(session, settings, out)
    return changes


def _later_start(session: Session, settings: Settings) -> list[str]:
    """Apply ADMIN_PASSWORD; log what the database overrides (it wins after the first start)."""
    changes: list[str] = []
    admin = find_user(session, settings.admin_user)
    if admin is None:
        log.warning(
            "ADMIN_USER=%s: no such user (deleted, or ADMIN_USER changed after the first start):"
            " the database wins, nothing is created; to make one: entrypoint.sh user create %s"
            " --superuser",
            settings.admin_user,
            settings.admin_user,
        )
    elif settings.admin_password and not password_matches(
        admin.password_hash, settings.admin_password
    ):
        # ADMIN_PASSWORD wins at every start: with it set, the environment is the way back in.
        admin.password_hash = hash_password(settings.admin_password)
        changes.append(f"changed the password of {settings.admin_user} (ADMIN_PASSWORD)")
    mirror = get_index_by_path(session, "/".join(MIRROR_INDEX))
    if (
        mirror is not None
        and settings.mirror_min_age_seconds
        and mirror.mirror_min_age != settings.mirror_min_age_seconds
    ):
        mirror.mirror_min_age = settings.mirror_min_age_seconds
        changes.append(f"set the release cooldown of root/pypi to {mirror.mirror_min_age} s")
    wanted = None if settings.block_vulnerable == "off" else settings.block_vulnerable
    if (
        mirror is not None
        and settings.block_vulnerable is not None
        and mirror.block_vulnerable != wanted
    ):
        mirror.block_vulnerable = wanted
        changes.append(f"set block_vulnerable of root/pypi to {wanted or 'off'}")
    if mirror is not None and mirror.mirror_url != settings.mirror_url:
        log.warning(
            "MIRROR_URL=%s differs from the mirror_url of root/pypi, %s: the database wins"
            " (MIRROR_URL only seeds the first start); to use MIRROR_URL: entrypoint.sh index"
            ' modify root/pypi mirror_url="$MIRROR_URL"',
            mask_url(settings.mirror_url),
            mask_url(mirror.mirror_url or ""),
        )
    session.commit()
    return changes


def _first_start(session: Session, settings: Settings) -> list[str]:
    """The superuser, root (owner of the mirror root/pypi) and ADMIN_USER/dev, as configured."""
    password = settings.admin_password
    if not password:
        password = secrets.token_urlsafe(18)
        # Written before the commit: a start that fails later (the port taken) keeps it.
        initial_password.write(settings, password)
    admin = User(
        username=settings.admin_user, password_hash=hash_password(password), is_superuser=True
    )
    # root owns the mirror, as in devpi; it cannot log in until someone sets a password.
    root = User(
        username=MIRROR_INDEX[0], password_hash="!" + secrets.token_hex(16), is_superuser=True
    )
    if settings.admin_user == root.username:  # ADMIN_USER=root: one user, with the password
        root = admin
    session.add(admin)
    session.add(root)
    session.flush()
    create_index(
        session,
        root,
        MIRROR_INDEX[1],
        {
            "type": "mirror",
            "mirror_url": settings.mirror_url,
            "title": "PyPI mirror",
            "mirror_min_age": settings.mirror_min_age_seconds,
            **(
                {"block_vulnerable": settings.block_vulnerable}
                if settings.block_vulnerable is not None
                else {}
            ),
        },
    )
    create_index(session, admin, STAGE_INDEX, {"bases": ["/".join(MIRROR_INDEX)]})
    session.commit()
    return [
        f"created superuser {settings.admin_user}",
        *(["created user root"] if root is not admin else []),
        f"created mirror index root/pypi of {mask_url(settings.mirror_url)}",
        f"created stage index {settings.admin_user}/{STAGE_INDEX} with bases root/pypi",
    ]


def show_initial_password(session: Session, settings: Settings, out: Any = None) -> None:
    """Print the generated password at every start while it is still the admin's; once it was
    changed (or the admin is gone) remove its file instead."""
    password = initial_password.read(settings)
    if password is None:
        return
    admin = find_user(session, settings.admin_user)
    if admin is None or not password_matches(admin.password_hash, password):
        initial_password.forget(settings, settings.admin_user, "has another password now")
        return
    print(
        f"\n  Generated password for {settings.admin_user!r}: {password}\n"
        f"  Kept in {initial_password.path_of(settings).resolve()} and shown at every start"
        f" until {settings.admin_user} logs in or changes it.\n"
        f"  Lost? `entrypoint.sh user passwd {settings.admin_user}` sets a new one.\n",
        file=out or sys.stdout,  # looked up now: a default bound at import goes stale
        flush=True,
    )
