"""The command line of `pyshelf`: every subcommand, its arguments and its --help text."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from app import __version__
from app.cli.accounts import cmd_index, cmd_refresh, cmd_token, cmd_user
from app.cli.base import EXIT_USAGE
from app.cli.operations import (
    cmd_advisories,
    cmd_backup,
    cmd_bundle_export,
    cmd_bundle_import,
    cmd_cache,
    cmd_import_devpi,
    cmd_prefetch,
    cmd_reindex,
    cmd_restore,
    cmd_verify,
)
from app.cli.server import cmd_healthcheck, cmd_migrate, cmd_prepare, cmd_serve
from app.core.config_kinds import parse_size
from app.ops.prepare import MIRROR_INDEX


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


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
