"""The `pyshelf` command: parse the arguments, run the operation, print what it did, and turn an
OperationError into one line and exit 1 (bad usage, configuration or no confirmation: exit 2)."""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import __version__
from app.core.config import (
    ConfigError,
    Settings,
    env_file,
    mask_database_url,
    parse_size,
    sources,
)
from app.core.dists import normalize_name
from app.core.logs import configure
from app.core.storage import make_storage
from app.core.upstream import mask_url
from app.data.db import Database, begin_write
from app.data.models import Index, MirrorPage, Token, User
from app.http.auth import new_token_secret, token_hash
from app.ops.osv_import import import_osv
from app.ops.preflight import settings_for_start
from app.ops.prepare import (
    MIRROR_INDEX,
    PRIVATE_UMASK,
    OperationError,
    bootstrap,
    check_data_dir,
    clean_tmp,
    find_user,
    make_data_dir_private,
    migrate,
)
from app.ops.server import exec_gunicorn, healthcheck
from app.services import fulltext, pagecache
from app.services.indexes import (
    IndexConfigError,
    apply_config,
    create_index,
    get_index_by_path,
    index_config,
    resolution_order,
)
from app.services.passwords import hash_password
from app.services.releases import (
    InUse,
    check_deletable,
    delete_index,
    delete_owned_indexes,
)

if TYPE_CHECKING:
    from app.ops.targets import Target

log = logging.getLogger("pyshelf")

NEEDS_SCHEMA = {
    "user",
    "token",
    "index",
    "refresh",
    "import-devpi",
    "verify",
    "cache",
    "reindex",
    "advisories",
}
# Exit codes (docs/operations.md): 0 done, 1 the operation failed (one line says why), 2 bad
# usage, invalid configuration or a destructive command not confirmed; 130 interrupted (Ctrl-C).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
MASK = "********"  # what `config show` prints for a secret that is set


class CommandError(OperationError):
    """A command was given something it cannot do, or found what it reports with exit 1."""


class NotConfirmed(Exception):
    """A destructive command was not confirmed (no --yes, and no one at a terminal said yes)."""


def confirm(args: argparse.Namespace, question: str) -> None:
    """Go on when --yes was given or the person at the terminal answers yes; else NotConfirmed."""
    if args.yes:
        return
    if not sys.stdin.isatty():  # a script or a pipe: nobody can answer, so nothing is done
        raise NotConfirmed(f"{question} Not confirmed: add --yes to do it without a question")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise NotConfirmed("not confirmed: nothing was changed")


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
    try:
        check_deletable(session, paths)
    except InUse as exc:
        raise CommandError(str(exc).rstrip(".")) from None


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
    # A database from before full-text search gets its index at its first start after the upgrade.
    fulltext.rebuild(settings, progress=False, only_if_empty=True)


def cmd_user(settings: Settings, args: argparse.Namespace) -> None:
    """user create|passwd|delete|list."""
    database = Database(settings.database_url)
    if args.action == "delete":
        with database.session() as session:  # read only: no write lock while a person answers
            user = find_user(session, args.name)
            if user is None:
                raise CommandError(f"user {args.name} does not exist")
            owned = [i.path for i in user.indexes]
            _refuse_if_based_on(session, owned)
        what = f" and the indexes {', '.join(owned)} with everything in them" if owned else ""
        confirm(args, f"Delete user {args.name}{what}?")
    with database.session() as session:
        begin_write(session)
        if args.action == "list":
            for each in session.scalars(select(User).order_by(User.username)):
                print(f"{each.username}{' (superuser)' if each.is_superuser else ''}")
            return
        user = find_user(session, args.name)
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
            try:
                delete_owned_indexes(session, user)
            except InUse as exc:
                raise CommandError(str(exc).rstrip(".")) from None
            session.delete(user)
        session.commit()
        print(f"user {args.name}: {args.action} done")


def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    """token create USER: print a new API token (use it with username __token__)."""
    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        user = find_user(session, args.name)
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
    if args.action == "delete":
        with database.session() as session:  # read only: no write lock while a person answers
            if get_index_by_path(session, args.path) is None:
                raise CommandError(f"index {args.path} does not exist")
            _refuse_if_based_on(session, [args.path])
        confirm(args, f"Delete index {args.path} and every file and page in it?")
    with database.session() as session:
        begin_write(session)
        if args.action == "list":
            for each in session.scalars(select(Index)):
                print(f"{each.path} ({each.type})")
            return
        username, sep, name = args.path.partition("/")
        if not sep:
            raise CommandError(f"expected USER/NAME, got {args.path!r}")
        index = get_index_by_path(session, args.path)
        config = _parse_pairs(args.settings)
        try:
            if args.action == "create":
                owner = find_user(session, username)
                if owner is None:
                    raise CommandError(f"user {username} does not exist")
                index = create_index(session, owner, name, config)
            elif index is None:
                raise CommandError(f"index {args.path} does not exist")
            elif args.action == "modify":
                apply_config(session, index, config)
            elif args.action == "delete":
                try:
                    delete_index(session, index)
                except InUse as exc:
                    raise CommandError(str(exc).rstrip(".")) from None
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


# --- operations ---------------------------------------------------------------------------
# Each imports its module when it runs: `prepare` runs on every container start and loads none
# of them (prefetch even builds the whole Flask app).


def cmd_import_devpi(settings: Settings, args: argparse.Namespace) -> None:
    """import-devpi DIR: import a devpi-server export (devpi-export DIR) into an empty pyshelf."""
    from app.ops.devpi_import import import_export  # when it runs: see above

    directory = Path(args.directory)
    report = import_export(settings, directory)
    print(f"imported the devpi-server export in {directory}:")
    for line in report.lines():
        print(f"  {line}")


def cmd_backup(settings: Settings, args: argparse.Namespace) -> None:
    """backup PATH: write an archive while the server keeps serving."""
    from app.ops.backup import backup  # when it runs: see above
    from app.services.cache import human_bytes

    summary = backup(
        settings,
        args.path,  # a string: a trailing "/" names a folder, even one not made yet
        with_mirror_files=not args.without_mirror_files,
        force=args.force,
    )
    rate = summary.bytes / summary.seconds if summary.seconds else 0.0
    print(
        f"backup: {summary.path}: {summary.database} database and {summary.blobs} files "
        f"({human_bytes(summary.bytes)}) in {summary.seconds:.1f} s ({human_bytes(rate)}/s)"
    )
    if summary.left_out:
        why = sorted(set(summary.left_out.values()))
        print(
            f"  {len(summary.left_out)} mirror-cached files left out ({', '.join(why)}): "
            "the restored server fetches them again on demand"
        )


def cmd_restore(settings: Settings, args: argparse.Namespace) -> None:
    """restore PATH: into an empty DATA_DIR (or over one with --force, server stopped)."""
    from app.ops.restore import restore
    from app.services.cache import human_bytes  # when it runs: see above

    if args.force and Path(args.path).is_file():  # (a missing archive: restore says so)
        where = Path(settings.data_dir).resolve()
        confirm(args, f"Replace pyshelf's data in {where} by the backup (server stopped)?")
    summary = restore(settings, Path(args.path), force=args.force)
    counts = ", ".join(f"{n} {table}" for table, n in summary.counts.items())
    print(
        f"restore: {summary.database} database ({counts}) and {summary.blobs} files "
        f"({human_bytes(summary.bytes)}) into {Path(settings.data_dir).resolve()} "
        f"in {summary.seconds:.1f} s"
    )
    if summary.left_out:
        print(f"  {summary.left_out} mirror-cached files were not in the backup: fetched on demand")
    print("  start the server as usual (pyshelf serve): it migrates the schema if needed")


def cmd_verify(settings: Settings, args: argparse.Namespace) -> None:
    """verify [--repair]: check every blob and row; exit 1 when damage is left; warn about
    data that other users may read."""
    # when it runs: see above
    from app.ops.integrity import format_open_paths, format_report, open_to_others, verify

    report = verify(settings, repair=args.repair)
    print(format_report(report))
    found = open_to_others(settings)
    if found:  # a warning: the exit code stays about damage
        print(format_open_paths(found, settings))
    if report.is_damaged:
        raise CommandError("damage found (see above)")


def cmd_cache(settings: Settings, args: argparse.Namespace) -> None:
    """cache stats|prune: the mirror cache's size and hit ratio; evict down to the cap now."""
    from app.services.cache import (  # when it runs: see above
        MirrorCache,
        human_bytes,
        stats_as_dict,
    )

    database = Database(settings.database_url)
    cache = MirrorCache(settings, database, make_storage(settings))
    try:
        if args.action == "prune":
            adopted, adopted_bytes = cache.adopt()
            if adopted:
                size = human_bytes(adopted_bytes)
                print(f"counted {adopted} cached files that were not recorded yet ({size})")
            cap = args.max_size if args.max_size is not None else settings.mirror_cache_max_bytes
            if cap is None:
                raise CommandError("no cap: set MIRROR_CACHE_MAX_SIZE (or give --max-size)")
            result = cache.evict(max_bytes=cap)
            print(
                f"cache prune: removed {result.removed_files} files "
                f"({human_bytes(result.removed_bytes)}); {human_bytes(result.total_after)} "
                f"cached, cap {human_bytes(cap)}"
                + (f" ({result.skipped})" if result.skipped else "")
            )
            return
        stats = cache.stats()
        if args.json:
            print(json.dumps(stats_as_dict(stats), indent=2))
            return
        cap = f"{human_bytes(stats.max_bytes)}" if stats.max_bytes else "none"
        used = f" ({stats.total_bytes * 100 / stats.max_bytes:.0f} %)" if stats.max_bytes else ""
        ratio = f"{stats.hit_ratio * 100:.1f} %" if stats.hit_ratio is not None else "-"
        print(f"mirror cache: {human_bytes(stats.total_bytes)} in {stats.files} files{used}")
        print(f"cap (MIRROR_CACHE_MAX_SIZE): {cap}")
        print(f"hit ratio: {ratio} ({stats.hits} hits, {stats.misses} misses)")
        for path, row in stats.per_index.items():
            print(
                f"  {path}: {human_bytes(row['bytes'])} in {row['files']} files, "
                f"{row['hits']} hits, {row['misses']} misses"
            )
    finally:
        database.engine.dispose()


def cmd_prefetch(settings: Settings, args: argparse.Namespace) -> None:
    """prefetch -r FILE [REQ ...] [--index USER/NAME] [target options]: resolve what the
    requirements need for the targets and fill the cache with it; exit 1 on any miss."""
    from app.ops.prefetch import format_summary, prefetch  # see above
    from app.ops.requirements import Requirements, parse_line, read_requirements

    requirements = Requirements([], pre=args.pre)
    for path in args.requirement or []:
        found = read_requirements(Path(path))
        requirements.lines += found.lines
        requirements.pre = requirements.pre or found.pre
    requirements.lines += [parse_line(text) for text in args.requirements]
    if not requirements.lines:
        raise CommandError("nothing to prefetch: give -r requirements.txt or requirements")
    targets = targets_of(args)
    check_data_dir(settings)
    migrate(settings)
    summary = prefetch(settings, requirements, targets, args.index)
    print(format_summary(summary))
    if summary.misses:
        raise CommandError(
            f"{len(summary.misses)} things a complete install needs could not be fetched "
            "(listed above)"
        )


def cmd_bundle_export(settings: Settings, args: argparse.Namespace) -> None:
    """bundle export -o PATH [-r FILE] [REQ ...] [target options] [--all-cached] [--index
    USER/NAME]: resolve what the requirements need for the targets (as prefetch), fetch what
    the mirror lacks, and write those files with their pages; exit 1 on any miss."""
    from app.ops.bundle_export import export_bundle, files_for  # see above
    from app.ops.prefetch import format_summary, prefetch
    from app.ops.requirements import Requirements, parse_line, read_requirements
    from app.services.cache import human_bytes

    requirements = Requirements([], pre=args.pre)
    for path in args.requirement or []:
        found = read_requirements(Path(path))
        requirements.lines += found.lines
        requirements.pre = requirements.pre or found.pre
    requirements.lines += [parse_line(text) for text in args.project or []]
    if not requirements.lines and not args.all_cached and not args.index:
        raise CommandError("nothing to export: give -r, --project, --all-cached or --index")
    targets = targets_of(args)
    check_data_dir(settings)
    migrate(settings)
    files: list[tuple[str, str]] = []
    if requirements.lines:
        fetched = prefetch(settings, requirements, targets, args.mirror)
        print(format_summary(fetched))
        if fetched.misses:
            raise CommandError(
                f"{len(fetched.misses)} things a complete install needs could not be fetched "
                "(listed above): no bundle written"
            )
        files = sorted({(f.project, f.filename) for f in fetched.plan.files})
    if args.all_cached:
        database = Database(settings.database_url)
        try:
            with database.session() as session:
                mirror = get_index_by_path(session, args.mirror)
                if mirror is None or not mirror.is_mirror:
                    raise CommandError(f"{args.mirror} is not a mirror index here")
                files = sorted(set(files) | set(files_for(session, mirror)))
        finally:
            database.engine.dispose()
    summary = export_bundle(
        settings,
        Path(args.output),
        mirror_path=args.mirror,
        files=files,
        stage_paths=args.index or [],
        force=args.force,
    )
    print(
        f"bundle export: {summary.path}: bundle {summary.bundle_id}, {summary.projects} projects, "
        f"{summary.files} files, {summary.blobs} blobs ({human_bytes(summary.bytes)}) "
        f"in {summary.seconds:.1f} s"
    )


def cmd_bundle_import(settings: Settings, args: argparse.Namespace) -> None:
    """bundle import PATH [--into USER/NAME]: merge a bundle into this (running) server."""
    from app.ops.bundle_import import import_bundle  # see above
    from app.services.cache import human_bytes

    check_data_dir(settings)
    migrate(settings)
    summary = import_bundle(settings, Path(args.path), into=args.into)
    for path in summary.indexes_created:
        print(f"created offline mirror {path}" if args.into == path else f"created index {path}")
    print(
        f"bundle import: bundle {summary.bundle_id} (made {summary.created_at}): "
        f"{summary.projects} projects imported ({summary.files} files), "
        f"{summary.already} already imported from it; {summary.blobs_stored} blobs stored "
        f"({human_bytes(summary.bytes)}), {summary.blobs_reused} already here, "
        f"in {summary.seconds:.1f} s"
    )


# --- the server -----------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    """serve: prepare as `prepare` does, then become gunicorn (never returns)."""
    cmd_prepare(settings, args)
    exec_gunicorn()


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


# --- the command line ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line that says where help is."""

    def error(self, message: str) -> NoReturn:
        """Print the mistake in one line and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# -v works after any subcommand too: `pyshelf user list -v`.
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument(
    "-v",
    "--verbose",
    action="count",
    default=argparse.SUPPRESS,
    help="log what happens (INFO; -vv: DEBUG); without it only warnings and errors "
    "(serve always logs at LOG_LEVEL)",
)
_YES = argparse.ArgumentParser(add_help=False)
_YES.add_argument("-y", "--yes", action="store_true", help="do it without asking (for scripts)")


def _command(sub: Any, name: str, summary: str, *, parents: tuple[Any, ...] = ()) -> Any:
    """A subcommand whose --help starts with `summary`."""
    return sub.add_parser(name, help=summary, description=summary, parents=[_COMMON, *parents])


def build_parser() -> argparse.ArgumentParser:
    """The command line of `pyshelf` (and of entrypoint.sh, which runs it)."""
    parser = _Parser(
        prog="pyshelf",
        description="A private Python package index and caching PyPI mirror. "
        "Every command reads the same settings: environment variables, over those in "
        "ENV_FILE or else ./.env (pyshelf config show).",
        epilog="Exit codes: 0 done, 1 failed (one line on stderr says why), 2 bad usage, "
        "invalid configuration or not confirmed, 130 interrupted. docs/operations.md has more.",
        parents=[_COMMON],
    )
    parser.set_defaults(verbose=0, yes=False)
    parser.add_argument("--version", action="version", version=f"pyshelf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(
        sub,
        "serve",
        "check the data directory, migrate, bootstrap from the environment, "
        "then run gunicorn on HOST:PORT",
    ).set_defaults(func=cmd_serve)
    _command(
        sub, "healthcheck", "exit 0 when this server's /+status answers 200 (Docker HEALTHCHECK)"
    ).set_defaults(func=cmd_healthcheck)
    _command(
        sub, "prepare", "what serve does before gunicorn starts: check, migrate, bootstrap"
    ).set_defaults(func=cmd_prepare)
    _command(
        sub, "migrate", "bring the database schema to this version (serve does it too)"
    ).set_defaults(func=cmd_migrate)
    config = _command(sub, "config", "the settings in effect")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    _command(
        config_sub,
        "show",
        "each setting's value and source (environment, .env file or "
        "default), secrets masked; exit 2 when one is invalid",
    )

    add_accounts(sub)
    add_operations(sub)
    return parser


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> None:
    """reindex: rebuild the full-text search index from the database and the docs zips."""
    counts = fulltext.rebuild(settings)
    print("reindex: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))


def cmd_advisories(settings: Settings, args: argparse.Namespace) -> None:
    """advisories import FILE: replace the stored advisories with an OSV export's."""
    database = Database(settings.database_url)
    with database.session() as session:
        summary = import_osv(session, Path(args.file), progress=not args.quiet)
    database.engine.dispose()
    print(summary.line(Path(args.file)))


def add_accounts(sub: Any) -> None:
    """user, token, index, refresh, import-devpi."""
    user = _command(sub, "user", "manage users")
    user.set_defaults(func=cmd_user)
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    how_given = "else $PYSHELF_PASSWORD, a prompt at a terminal, or generated and printed"
    create = _command(actions, "create", "create a user")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--password", help=how_given)
    create.add_argument("--email")
    create.add_argument("--superuser", action="store_true", help="may manage everything")
    passwd = _command(actions, "passwd", "set a user's password (works with the server down)")
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument("--password", help=how_given)
    delete = _command(actions, "delete", "delete a user, its indexes and tokens", parents=(_YES,))
    delete.add_argument("name", metavar="NAME")
    _command(actions, "list", "list the users")

    token = _command(sub, "token", "API tokens (the password of username __token__)")
    token.set_defaults(func=cmd_token)
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _command(actions, "create", "print a new API token of a user")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--description")

    index = _command(sub, "index", "manage indexes (settings as key=value)")
    index.set_defaults(func=cmd_index, settings=[])
    actions = index.add_subparsers(dest="action", required=True, metavar="ACTION")
    pairs_help = "e.g. bases=root/pypi volatile=true acl_upload=alice,bob"
    create = _command(actions, "create", "create an index")
    create.add_argument("path", metavar="USER/NAME")
    create.add_argument("settings", nargs="*", metavar="KEY=VALUE", help=pairs_help)
    modify = _command(actions, "modify", "change an index's settings")
    modify.add_argument("path", metavar="USER/NAME")
    modify.add_argument("settings", nargs="+", metavar="KEY=VALUE", help=pairs_help)
    delete = _command(actions, "delete", "delete an index and its files", parents=(_YES,))
    delete.add_argument("path", metavar="USER/NAME")
    show = _command(actions, "show", "print an index's settings as JSON")
    show.add_argument("path", metavar="USER/NAME")
    _command(actions, "list", "list the indexes")

    refresh = _command(sub, "refresh", "refetch a mirrored project on its next request")
    refresh.add_argument("path", metavar="USER/INDEX")
    refresh.add_argument("project", metavar="PROJECT")
    refresh.set_defaults(func=cmd_refresh)

    devpi = _command(
        sub, "import-devpi", "import a devpi-server export (devpi-export DIR) into an empty pyshelf"
    )
    devpi.add_argument("directory", metavar="DIR", help="the directory devpi-export wrote")
    devpi.set_defaults(func=cmd_import_devpi)


def add_operations(sub: Any) -> None:
    """backup, restore, verify, cache, prefetch, bundle."""
    backup = _command(sub, "backup", "write a hot backup archive (the server keeps serving)")
    backup.add_argument(
        "path", metavar="PATH", help="archive to write, or a folder to write pyshelf-DATE.tar into"
    )
    backup.add_argument(
        "--without-mirror-files",
        action="store_true",
        help="leave out mirror-cached files (they are fetched again on demand)",
    )
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")
    backup.set_defaults(func=cmd_backup)

    restore = _command(sub, "restore", "restore a backup into an empty DATA_DIR", parents=(_YES,))
    restore.add_argument("path", metavar="PATH", help="the archive `backup` wrote")
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty DATA_DIR (stop the server first; asks unless --yes)",
    )
    restore.set_defaults(func=cmd_restore)

    verify = _command(sub, "verify", "check every blob and row; exit 1 on damage")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="fetch damaged mirror files again and remove orphans (never touches uploads)",
    )
    verify.set_defaults(func=cmd_verify)

    cache = _command(sub, "cache", "the mirror cache: stats, or prune down to the cap now")
    cache.set_defaults(func=cmd_cache)
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = _command(actions, "stats", "size, files and hit ratio, per mirror index")
    stats.add_argument("--json", action="store_true", help="as JSON")
    prune = _command(actions, "prune", "evict the least recently used files down to the cap")
    prune.add_argument(
        "--max-size", type=_size, default=None, help="prune to this size instead of the cap"
    )

    prefetch = _command(sub, "prefetch", "download what requirements need into the cache")
    prefetch.add_argument("requirements", nargs="*", help="requirements such as NAME==1.0")
    prefetch.add_argument("-r", "--requirement", action="append", help="a requirements file")
    prefetch.add_argument("--index", default="/".join(MIRROR_INDEX), help="default root/pypi")
    add_target_options(prefetch)
    prefetch.add_argument("--pre", action="store_true", help="pre-releases count too")
    # Dependencies are always resolved now; --deps stays accepted so old scripts keep working.
    prefetch.add_argument("--deps", action="store_true", help=argparse.SUPPRESS)
    prefetch.set_defaults(func=cmd_prefetch)

    bundle = _command(sub, "bundle", "carry mirror files and releases across an air gap")
    actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = _command(actions, "export", "write a bundle (on the connected server)")
    export.add_argument("-o", "--output", required=True, metavar="PATH", help="the tar to write")
    export.add_argument(
        "-r", "--requirement", action="append", metavar="FILE", help="requirements file"
    )
    export.add_argument(
        "--project", action="append", metavar="REQ", help="a requirement, e.g. NAME==1.0"
    )
    export.add_argument("--pre", action="store_true", help="allow pre-releases (as pip --pre)")
    add_target_options(export)
    export.add_argument("--all-cached", action="store_true", help="every file the mirror holds")
    export.add_argument("--mirror", default="/".join(MIRROR_INDEX), help="default root/pypi")
    export.add_argument(
        "--index", action="append", metavar="USER/NAME", help="a stage's releases and docs"
    )
    export.add_argument("--force", action="store_true", help="replace PATH if it exists")
    export.set_defaults(func=cmd_bundle_export)
    load = _command(actions, "import", "merge a bundle into this server (it keeps serving)")
    load.add_argument("path", metavar="PATH", help="the tar `bundle export` wrote")
    load.add_argument(
        "--into", metavar="USER/NAME", help="the mirror index (default: the exported one's path)"
    )
    load.set_defaults(func=cmd_bundle_import)

    sub.add_parser("reindex", help="rebuild the full-text search index").set_defaults(
        func=cmd_reindex
    )

    advisories = _command(sub, "advisories", "security advisories (block_vulnerable)")
    advisories.set_defaults(func=cmd_advisories)
    actions = advisories.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = _command(
        actions,
        "import",
        "replace the advisories with an OSV export of PyPI (a zip of OSV JSON records)",
    )
    load.add_argument("file", metavar="FILE", help="the zip, e.g. carried in from a connected host")
    load.add_argument("--quiet", action="store_true", help="no progress bar")


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """The target environment options of prefetch (as pip download takes them)."""
    parser.add_argument(
        "--python-version",
        default="",
        metavar="X.Y[,X.Y...]",
        help="target Pythons (default: this interpreter's)",
    )
    parser.add_argument(
        "--platform",
        default="",
        metavar="TAG[,TAG...]",
        help="target platform tags, e.g. manylinux_2_28_x86_64,win_amd64,macosx_11_0_arm64",
    )
    parser.add_argument("--implementation", default="cp", help="cp (CPython), the default")


def targets_of(args: argparse.Namespace) -> list[Target]:
    """The target environments the options of add_target_options() name."""
    from app.ops.targets import parse_targets  # when it runs: see above

    return parse_targets(args.python_version, args.platform, args.implementation)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors print one line and exit 1 (usage, config, not confirmed: 2)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage mistake (2), already printed
        return int(exc.code or 0)
    if args.command == "config":
        return show_config()
    try:
        # a server start checks everything it needs before `prepare` creates anything
        starts = args.command in ("prepare", "serve")
        settings = settings_for_start() if starts else Settings.from_env()
    except ConfigError as exc:
        print(f"pyshelf: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure(settings, "[pyshelf] %(levelname)s %(message)s")  # LOG_FORMAT=json: JSON lines
    if args.command != "serve":  # quiet success: a command prints its result, logs on -v
        verbose = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
        logging.getLogger().setLevel(max(verbose, logging.getLevelName(settings.log_level)))
    try:
        if args.command in NEEDS_SCHEMA:  # an admin command on a volume no server started yet
            check_data_dir(settings)
            migrate(settings)
        args.func(settings, args)
    except OperationError as exc:
        print(f"pyshelf: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except NotConfirmed as exc:
        print(f"pyshelf: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def run() -> None:
    """`pyshelf` (app/__main__.py) and `python -m app.cli`: main() under umask 077, then exit."""
    os.umask(PRIVATE_UMASK)  # as entrypoint.sh did: DATA_DIR holds secrets (app/ops/prepare.py)
    try:
        code = main()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        code = EXIT_INTERRUPTED
    # Exit without a last garbage collection over every object the imports made (0.1 s of each
    # start). Commands close what they open; what is left in a reference cycle is not
    # finalized, and the kernel closes its files and sockets.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
