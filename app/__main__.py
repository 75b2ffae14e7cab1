"""`pyshelf` (the console script) and `python -m app`: app/cli/'s command line, except that the
bare `healthcheck` the image runs every 30 s loads only what it needs (the rest takes seconds)."""

from __future__ import annotations

import sys


def run() -> None:
    """Run `pyshelf ARGS` and exit with its code."""
    if sys.argv[1:] == ["healthcheck"]:
        from app.ops.server import run_healthcheck  # only this: no SQLAlchemy, Flask or models

        sys.exit(run_healthcheck())
    from app.cli import run as run_command  # every other command, --help included

    run_command()


if __name__ == "__main__":
    run()
