"""Progress of long admin commands: a bar on a terminal, a log line every 10 % otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("pyshelf")

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1
LOG_EVERY_PERCENT = 10


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


class Progress:
    """Counts work done out of `total` (bytes, or items when `unit` is not "bytes"), and files
    out of `files` when given."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        files: int | None = None,
        unit: str = "bytes",
        stream: TextIO | None = None,
        is_tty: bool | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty() if is_tty is None else is_tty
        self.done = 0
        self.files = files
        self.files_done = 0
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.logged_percent = 0

    def _amount(self, value: float) -> str:
        return _human(value) if self.unit == "bytes" else f"{value:.0f} {self.unit}"

    def _rate(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        return f"{_human(rate)}/s" if self.unit == "bytes" else f"{rate:.1f} {self.unit}/s"

    def grow(self, amount: int) -> None:
        """Add `amount` to the total: work found to be larger than known at the start."""
        self.total += max(amount, 0)

    def _files(self) -> str:
        return "" if self.files is None else f"{self.files_done}/{self.files} files, "

    def advance(self, amount: int, *, files: int = 0) -> None:
        """Add `amount` (and `files`) to the work done; redraw or log when it is time."""
        self.done += amount
        self.files_done += files
        percent = 100 if not self.total else min(100, self.done * 100 // self.total)
        if not self.total and self.files:  # sizes unknown so far: count files instead
            percent = min(100, self.files_done * 100 // self.files)
        if self.is_tty:
            now = time.monotonic()
            if now - self.drawn_at >= REDRAW_SECONDS or percent == 100:
                self.drawn_at = now
                filled = BAR_WIDTH * percent // 100
                bar = "#" * filled + "." * (BAR_WIDTH - filled)
                self.stream.write(
                    f"\r{self.label} [{bar}] {percent:3d}% {self._files()}"
                    f"{self._amount(self.done)}/{self._amount(self.total)} {self._rate()}  "
                )
                self.stream.flush()
        elif percent >= self.logged_percent + LOG_EVERY_PERCENT:
            self.logged_percent = percent - percent % LOG_EVERY_PERCENT
            log.info(
                "%s: %d%% (%s%s of %s)",
                self.label,
                self.logged_percent,
                self._files(),
                self._amount(self.done),
                self._amount(self.total),
            )

    def finish(self) -> float:
        """End the bar's line; return the seconds it took."""
        seconds = time.monotonic() - self.started
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()
        return seconds
