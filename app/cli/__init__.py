"""The `pyshelf` command: parse the arguments, run the operation, print what it did, and turn an
OperationError into one line and exit 1 (bad usage, configuration or no confirmation: exit 2)."""

from __future__ import annotations

import gc
import logging
import os
import sys

from app.cli.base import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, NotConfirmed
from app.cli.parser import build_parser
from app.cli.server import show_config
from app.core.config import ConfigError, Settings
from app.core.logs import configure
from app.ops.preflight import settings_for_start
from app.ops.prepare import PRIVATE_UMASK, OperationError, check_data_dir, migrate

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
