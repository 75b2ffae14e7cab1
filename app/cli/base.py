"""What every command shares: the exit codes, CommandError and the --yes confirmation."""

from __future__ import annotations

import argparse
import sys

from app.ops.prepare import OperationError

# Exit codes (docs/operations.md): 0 done, 1 the operation failed (one line says why), 2 bad
# usage, invalid configuration or a destructive command not confirmed; 130 interrupted (Ctrl-C).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


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
