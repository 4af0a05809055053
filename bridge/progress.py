"""How far a recovery run (backfill, replay) got: a bar at a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import time
from typing import TextIO

# How often a run that is not at a terminal says how far it got.
PROGRESS_EVERY_SECONDS = 5.0


class Progress:
    """Says how far a run got, on `stream` at a terminal, else as `<command> <phase>` lines on bridge.<command>."""

    def __init__(self, stream: TextIO, command: str = "backfill") -> None:
        self._stream = stream
        self._terminal = stream.isatty()
        self._said = 0.0
        self._command = command
        self._log = logging.getLogger(f"bridge.{command}")

    def update(self, phase: str, done: int, total: int | None = None, *, final: bool = False) -> None:
        if self._terminal:
            self._draw(phase, done, total, final)
            return
        now = time.monotonic()
        if final or now - self._said >= PROGRESS_EVERY_SECONDS:
            self._said = now
            self._log.info(
                "%s %s", self._command, phase, extra={"progress": {"phase": phase, "done": done, "total": total}}
            )

    def _draw(self, phase: str, done: int, total: int | None, final: bool) -> None:
        if total:
            filled = 30 * done // total
            line = f"{phase:<10} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            line = f"{phase:<10} {done}"
        self._stream.write("\r" + line + ("\n" if final else ""))
        self._stream.flush()
