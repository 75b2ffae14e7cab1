"""Admin commands behind entrypoint.sh: prepare (check, migrate, bootstrap), users, indexes."""

from __future__ import annotations

import argparse
import gc
import getpass
import importlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import pagecache, schema
from app.auth import hash_password, new_token_secret, password_matches, token_hash
from app.config import ConfigError, Settings
from app.db import Database, begin_write, make_engine
from app.dists import normalize_name
from app.indexes import (
    IndexConfigError,
    apply_config,
    create_index,
    dependents,
    get_index_by_path,
    index_config,
)
from app.locks import Locks
from app.models import MirrorPage, Token, User
from app.schema import MIGRATIONS_DIR
from app.upstream import mask_url

log = logging.getLogger("pyshelf")

MIRROR_INDEX = ("root", "pypi")
STAGE_INDEX = "dev"
TMP_MAX_AGE_SECONDS = 3600  # leftovers of killed uploads/downloads older than this are removed
NEEDS_SCHEMA = {"user", "token", "index", "refresh", "import-devpi"}
MIGRATE_WAIT_SECONDS = 600  # how long a start waits for another replica's migration
# New files and folders for this user only: DATA_DIR holds the secret key that signs sessions,
# the database and private packages, and backups hold all three. (entrypoint.sh sets it too.)
PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700


class CommandError(Exception):
    """A command failed for a reason the admin can act on."""


def check_data_dir(settings: Settings) -> None:
    """The data directory must exist (or be creatable) and be writable by this user."""
    data_dir = Path(settings.data_dir)
    try:
        data_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        uid, gid = os.getuid(), os.getgid()
        raise CommandError(
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
                raise CommandError(
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


def _get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def bootstrap(session: Session, settings: Settings, out: Any = None) -> list[str]:
    """Make the admin user, root/pypi and ADMIN_USER/dev exist as configured; idempotent.

    Returns what changed, for the log. Values that differ from the environment (admin password,
    MIRROR_URL) are applied; everything else that already exists is left alone.
    """
    changes: list[str] = []
    admin = _get_user(session, settings.admin_user)
    if admin is None:
        password = settings.admin_password
        if not password:
            password = secrets.token_urlsafe(18)
            print(  # printed once, on the very first start only
                f"\n  Generated password for {settings.admin_user!r}: {password}\n"
                "  It is shown only this once: store it, or set ADMIN_PASSWORD.\n",
                file=out or sys.stdout,  # looked up now: a default bound at import goes stale
                flush=True,
            )
        admin = User(
            username=settings.admin_user, password_hash=hash_password(password), is_superuser=True
        )
        session.add(admin)
        changes.append(f"created superuser {settings.admin_user}")
    else:
        if settings.admin_password and not password_matches(
            admin.password_hash, settings.admin_password
        ):
            admin.password_hash = hash_password(settings.admin_password)
            changes.append(f"changed the password of {settings.admin_user} (ADMIN_PASSWORD)")
        if not admin.is_superuser:
            admin.is_superuser = True
            changes.append(f"made {settings.admin_user} a superuser")

    root = _get_user(session, MIRROR_INDEX[0])
    if root is None:
        # root owns the mirror, as in devpi; it cannot log in until someone sets a password.
        root = User(
            username=MIRROR_INDEX[0], password_hash="!" + secrets.token_hex(16), is_superuser=True
        )
        session.add(root)
        changes.append("created user root")
    session.flush()

    mirror = get_index_by_path(session, "/".join(MIRROR_INDEX))
    if mirror is None:
        create_index(
            session,
            root,
            MIRROR_INDEX[1],
            {"type": "mirror", "mirror_url": settings.mirror_url, "title": "PyPI mirror"},
        )
        changes.append(f"created mirror index root/pypi of {mask_url(settings.mirror_url)}")
    elif mirror.mirror_url != settings.mirror_url:
        apply_config(session, mirror, {"mirror_url": settings.mirror_url})
        for page in session.scalars(select(MirrorPage).where(MirrorPage.index_id == mirror.id)):
            page.checked_at = None  # a new upstream: revalidate every cached page
        changes.append(f"changed the mirror_url of root/pypi to {mask_url(settings.mirror_url)}")
    session.flush()

    stage_path = f"{settings.admin_user}/{STAGE_INDEX}"
    if get_index_by_path(session, stage_path) is None:
        create_index(session, admin, STAGE_INDEX, {"bases": ["/".join(MIRROR_INDEX)]})
        changes.append(f"created stage index {stage_path} with bases root/pypi")
    session.commit()
    return changes


# --- subcommands ---------------------------------------------------------------------------


def _read_password(given: str | None, username: str) -> str:
    if given:
        return given
    if os.environ.get("PYSHELF_PASSWORD"):
        return os.environ["PYSHELF_PASSWORD"]
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {username}: ")
        if first != getpass.getpass("Again: "):
            raise CommandError("the passwords differ")
        return first
    password = secrets.token_urlsafe(18)
    print(f"Generated password for {username}: {password}")
    return password


def _refuse_if_based_on(session: Session, paths: list[str]) -> None:
    """Refuse to delete indexes that others list as bases (as the API's 409 does)."""
    used = dependents(session, paths)
    if used:
        what = "; ".join(f"{base} is a base of {', '.join(of)}" for base, of in used.items())
        raise CommandError(f"{what}; change those first")


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"expected key=value, got {pair!r}")
        config[key.strip()] = value.strip()
    return config


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


def cmd_user(settings: Settings, args: argparse.Namespace) -> None:
    """user create|passwd|delete|list."""
    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        if args.action == "list":
            for user in session.scalars(select(User).order_by(User.username)):
                print(f"{user.username}{' (superuser)' if user.is_superuser else ''}")
            return
        user = _get_user(session, args.name)
        if args.action == "create":
            if user is not None:
                raise CommandError(f"user {args.name} already exists")
            user = User(
                username=args.name,
                password_hash=hash_password(_read_password(args.password, args.name)),
                email=args.email,
                is_superuser=args.superuser,
            )
            session.add(user)
        elif user is None:
            raise CommandError(f"user {args.name} does not exist")
        elif args.action == "passwd":
            user.password_hash = hash_password(_read_password(args.password, args.name))
        elif args.action == "delete":
            _refuse_if_based_on(session, [i.path for i in user.indexes])
            session.delete(user)
        session.commit()
        print(f"user {args.name}: {args.action} done")


def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    """token create USER: print a new API token (use it with username __token__)."""
    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        user = _get_user(session, args.name)
        if user is None:
            raise CommandError(f"user {args.name} does not exist")
        secret = new_token_secret()
        session.add(
            Token(
                user_id=user.id,
                description=args.description or "",
                secret_sha256=token_hash(secret),
            )
        )
        session.commit()
        print(secret)


def cmd_index(settings: Settings, args: argparse.Namespace) -> None:
    """index create|modify|delete|show|list."""
    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        if args.action == "list":
            from app.models import Index

            for index in session.scalars(select(Index)):
                print(f"{index.path} ({index.type})")
            return
        username, sep, name = args.path.partition("/")
        if not sep:
            raise CommandError(f"expected USER/NAME, got {args.path!r}")
        index = get_index_by_path(session, args.path)
        config = _parse_pairs(args.settings)
        try:
            if args.action == "create":
                owner = _get_user(session, username)
                if owner is None:
                    raise CommandError(f"user {username} does not exist")
                index = create_index(session, owner, name, config)
            elif index is None:
                raise CommandError(f"index {args.path} does not exist")
            elif args.action == "modify":
                apply_config(session, index, config)
            elif args.action == "delete":
                _refuse_if_based_on(session, [index.path])
                session.delete(index)
                session.commit()
                print(f"deleted {args.path}")
                return
        except IndexConfigError as exc:
            raise CommandError(str(exc)) from None
        session.commit()
        print(json.dumps({args.path: index_config(index)}, indent=2))


def cmd_refresh(settings: Settings, args: argparse.Namespace) -> None:
    """refresh USER/INDEX PROJECT: mark cached mirror pages stale so they are fetched again."""
    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        index = get_index_by_path(session, args.path)
        if index is None:
            raise CommandError(f"index {args.path} does not exist")
        from app.indexes import resolution_order

        mirrors = [i.id for i in resolution_order(session, index) if i.is_mirror]
        pages = session.scalars(
            select(MirrorPage).where(
                MirrorPage.index_id.in_(mirrors),
                MirrorPage.normalized_name == normalize_name(args.project),
            )
        ).all()
        for page in pages:
            page.checked_at = None
        session.commit()
        print(f"{len(pages)} cached page(s) of {normalize_name(args.project)} marked for refresh")


def _command(module: str, name: str) -> Callable[[Settings, argparse.Namespace], None]:
    """The subcommand `name` of `module`, imported when it runs: a start imports none of them."""

    def run(settings: Settings, args: argparse.Namespace) -> None:
        getattr(importlib.import_module(module), name)(settings, args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The command line of entrypoint.sh's admin subcommands."""
    parser = argparse.ArgumentParser(prog="entrypoint.sh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="check the data dir, migrate, bootstrap").set_defaults(
        func=cmd_prepare
    )

    user = sub.add_parser("user", help="manage users")
    user.add_argument("action", choices=["create", "passwd", "delete", "list"])
    user.add_argument("name", nargs="?")
    user.add_argument("--password", help="else $PYSHELF_PASSWORD, a prompt, or generated")
    user.add_argument("--email")
    user.add_argument("--superuser", action="store_true")
    user.set_defaults(func=cmd_user)

    token = sub.add_parser("token", help="create an API token for a user")
    token.add_argument("action", choices=["create"])
    token.add_argument("name")
    token.add_argument("--description")
    token.set_defaults(func=cmd_token)

    index = sub.add_parser("index", help="manage indexes: key=value settings")
    index.add_argument("action", choices=["create", "modify", "delete", "show", "list"])
    index.add_argument("path", nargs="?", help="USER/NAME")
    index.add_argument("settings", nargs="*", help="e.g. bases=root/pypi volatile=true")
    index.set_defaults(func=cmd_index)

    refresh = sub.add_parser("refresh", help="refetch a mirrored project on next request")
    refresh.add_argument("path", help="USER/INDEX")
    refresh.add_argument("project")
    refresh.set_defaults(func=cmd_refresh)

    devpi = sub.add_parser(
        "import-devpi", help="import a devpi-server export (devpi-export DIR) into an empty pyshelf"
    )
    devpi.add_argument("directory", help="the directory devpi-export wrote")
    devpi.set_defaults(func=_command("app.devpi_import", "cmd_import_devpi"))
    add_operations(sub)
    return parser


def add_operations(sub: Any) -> None:
    """backup, restore, verify, cache, prefetch: each lives with the module that owns it."""

    backup = sub.add_parser("backup", help="write a hot backup archive (the server keeps serving)")
    backup.add_argument("path", help="archive to write, or a folder to write pyshelf-DATE.tar into")
    backup.add_argument(
        "--without-mirror-files",
        action="store_true",
        help="leave out mirror-cached files (they are fetched again on demand)",
    )
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")
    backup.set_defaults(func=_command("app.backup", "cmd_backup"))

    restore = sub.add_parser("restore", help="restore a backup into an empty DATA_DIR")
    restore.add_argument("path", help="the archive `backup` wrote")
    restore.add_argument(
        "--force", action="store_true", help="replace a non-empty DATA_DIR (stop the server first)"
    )
    restore.set_defaults(func=_command("app.restore", "cmd_restore"))

    verify = sub.add_parser("verify", help="check every blob and row; exit 1 on damage")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="fetch damaged mirror files again and remove orphans (never touches uploads)",
    )
    verify.set_defaults(func=_command("app.integrity", "cmd_verify"))

    cache = sub.add_parser("cache", help="mirror cache: stats, or prune down to the cap now")
    cache.add_argument("action", choices=["stats", "prune"])
    cache.add_argument("--json", action="store_true", help="stats as JSON")
    cache.add_argument(
        "--max-size", type=_size, default=None, help="prune to this size instead of the cap"
    )
    cache.set_defaults(func=_command("app.cache", "cmd_cache"))

    prefetch = sub.add_parser("prefetch", help="download what requirements need into the cache")
    prefetch.add_argument("requirements", nargs="*", help="requirements such as NAME==1.0")
    prefetch.add_argument("-r", "--requirement", action="append", help="a requirements file")
    prefetch.add_argument("--index", default="/".join(MIRROR_INDEX), help="default root/pypi")
    prefetch.add_argument(
        "--deps", action="store_true", help="also follow Requires-Dist (approximate)"
    )
    prefetch.set_defaults(func=_command("app.prefetch", "cmd_prefetch"))


def _size(text: str) -> int:
    from app.config import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Run one admin command; errors print one line and exit 1 (config errors 2)."""
    args = build_parser().parse_args(argv)
    if args.command in ("user",) and args.action != "list" and not args.name:
        print("entrypoint.sh: user: NAME is required", file=sys.stderr)
        return 2
    if args.command == "index" and args.action != "list" and not args.path:
        print("entrypoint.sh: index: USER/NAME is required", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pyshelf: {exc}", file=sys.stderr)
        return 2
    from app.logs import configure

    configure(settings, "[pyshelf] %(levelname)s %(message)s")  # LOG_FORMAT=json: JSON lines
    try:
        if args.command in NEEDS_SCHEMA:  # an admin command on a volume no server started yet
            check_data_dir(settings)
            migrate(settings)
        args.func(settings, args)
    except CommandError as exc:
        print(f"pyshelf: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # `python -m app.cli` runs this file as __main__, and the commands of other modules import
    # app.cli: run that module's main, so that the CommandError they raise is the one caught.
    from app.cli import main as cli_main

    os.umask(PRIVATE_UMASK)  # as entrypoint.sh does, for `python -m app.cli` run directly
    code = cli_main()
    # Exit without a last garbage collection over every object the imports made (0.1 s of each
    # start). Commands close what they open; what is left in a reference cycle is not
    # finalized, and the kernel closes its files and sockets.
    gc.freeze()
    sys.exit(code)
