"""The server's commands: prepare, serve, healthcheck, migrate and config show."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys

from app.cli.base import EXIT_USAGE, CommandError
from app.core.config import ConfigError, Settings, env_file, mask_database_url, sources
from app.core.upstream import mask_url
from app.data.db import Database, begin_write
from app.ops.prepare import bootstrap, check_data_dir, clean_tmp, make_data_dir_private, migrate
from app.ops.server import healthcheck, run_gunicorn
from app.services import fulltext, pagecache

log = logging.getLogger("pyshelf")

MASK = "********"  # what `config show` prints for a secret that is set


def cmd_prepare(settings: Settings, args: argparse.Namespace) -> None:
    """Check the data directory, migrate, bootstrap: what entrypoint.sh runs before gunicorn."""
    check_data_dir(settings)
    make_data_dir_private(settings)
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)  # gunicorn's counters start at 0
    removed = clean_tmp(settings)
    if removed:
        log.info("removed %d leftover temp files", removed)
    migrate(settings)
    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        for change in bootstrap(session, settings):
            log.info("bootstrap: %s", change)
        begin_write(session)
        pagecache.clear(session)  # pages are rebuilt with this start's MIRROR_CACHE_EXPIRY
        session.commit()
    database.engine.dispose()
    # A database from before full-text search gets its index at its first start after the upgrade.
    fulltext.rebuild(settings, progress=False, only_if_empty=True)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    """serve: prepare as `prepare` does, then become gunicorn (never returns)."""
    cmd_prepare(settings, args)
    run_gunicorn()


def cmd_healthcheck(settings: Settings, args: argparse.Namespace) -> None:
    """healthcheck: exit 0 when this server's /+status answers 200 (the Docker HEALTHCHECK)."""
    if not healthcheck(settings):
        raise CommandError("the server is not healthy (see above)")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    """migrate: check the data directory and bring the schema to the head revision."""
    check_data_dir(settings)
    migrate(settings)


def show_config() -> int:
    """config show: each setting's effective value and where it comes from, secrets masked;
    exit 2 (after the table) when the configuration is invalid."""
    path = env_file()
    print(f"# .env file: {path if path is not None else 'none (no ENV_FILE, no ./.env)'}")
    for row, text, source in sources():
        if row.kind.secret and text:
            text = MASK
        elif row.env == "DATABASE_URL":
            text = mask_database_url(text)
        elif "://" in text:
            text = mask_url(text)  # credentials in DATABASE_URL, MIRROR_URL, ...
        print(f"{row.env}={text}  # {source}")
    try:
        Settings.from_env()
    except ConfigError as exc:
        print(f"pyshelf: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0
