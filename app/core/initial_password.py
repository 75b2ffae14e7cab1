"""The generated first admin password, kept in DATA_DIR until the admin has used it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.core.config import Settings

log = logging.getLogger(__name__)

FILE_NAME = "initial-admin-password"
FILE_MODE = 0o600  # the password of a superuser: for pyshelf's own user only


def path_of(settings: Settings) -> Path:
    """DATA_DIR/initial-admin-password."""
    return Path(settings.data_dir) / FILE_NAME


def write(settings: Settings, password: str) -> None:
    """Keep the generated password in a file only this user may read, replaced atomically."""
    path = path_of(settings)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover of a killed start (the pid repeats in containers)
    # O_EXCL: a fresh file, never one planted there (a symlink is not followed), born 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), FILE_MODE)  # whatever the umask
            file.write(password + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read(settings: Settings) -> str | None:
    """The kept password, or None when there is none (any more)."""
    try:
        return path_of(settings).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def forget(settings: Settings, username: str, why: str) -> None:
    """Remove the kept password of the admin `username` (other users have none), saying why."""
    path = path_of(settings)
    if username == settings.admin_user and path.exists():
        path.unlink(missing_ok=True)
        log.info("removed %s: %s %s", path, username, why)
