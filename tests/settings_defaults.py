"""The session's test servers (tests/pgserver.py, tests/s3server.py) give Settings made for a
test's own data directory their defaults (a database, a bucket): one patch of
Settings.__post_init__ runs every registered filler, and is undone when the last one leaves."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

Filler = Callable[[Any], None]  # fills defaults on a Settings being built (object.__setattr__)
_fillers: list[Filler] = []
_original_post_init: Callable[[Any], None] | None = None


CHECKOUT = Path(__file__).resolve().parents[1]


def is_test_data_dir(data_dir: str | os.PathLike[str]) -> bool:
    """Data directories under the temp folder are tests' own; others keep the real defaults
    (SQLite, local blobs): so does the checkout's own ./data when the checkout itself is under
    the temp folder (a clean clone in /tmp)."""
    temp = Path(tempfile.gettempdir()).resolve()
    parents = Path(data_dir).resolve().parents
    return temp in parents and CHECKOUT not in parents


def register(filler: Filler) -> None:
    """Run `filler` on every Settings built for a test data directory, before its own checks."""
    global _original_post_init
    from app.core.config import Settings

    if _original_post_init is None:
        original = _original_post_init = Settings.__post_init__

        def post_init(settings: Settings) -> None:
            if is_test_data_dir(settings.data_dir):
                for fill in _fillers:
                    fill(settings)
            original(settings)

        Settings.__post_init__ = post_init  # type: ignore[method-assign]
    _fillers.append(filler)


def unregister(filler: Filler) -> None:
    """Stop running `filler`; Settings gets its own __post_init__ back with the last one."""
    global _original_post_init
    from app.core.config import Settings

    if filler in _fillers:
        _fillers.remove(filler)
    if not _fillers and _original_post_init is not None:
        Settings.__post_init__ = _original_post_init  # type: ignore[method-assign]
        _original_post_init = None
