"""What a command is waiting for, with the time it has waited, on stderr.

On a terminal: one rich spinner line, updated in place. Otherwise (a pipe, a log, CI):
plain lines, one when the status changes and one every ``interval_s`` while it does not,
so a script's log shows progress without a line per poll::

    waiting for engine tiny-1a2b3c to become READY: STARTING (loading) (0 s)
    waiting for engine tiny-1a2b3c to become READY: STARTING (loading) (10 s)
    waiting for engine tiny-1a2b3c to become READY: READY (12 s)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

__all__ = ["WaitProgress", "plain_line_due"]


def plain_line_due(
    status: str, last_status: str | None, now: float, last_line_at: float, interval_s: float
) -> bool:
    """Whether the plain form prints a line now: a new status, or ``interval_s`` passed."""
    return status != last_status or now - last_line_at >= interval_s


class WaitProgress:
    """Shows ``what`` is awaited, its latest status and the elapsed time.

    Args:
        what: e.g. ``"waiting for the gateway at http://127.0.0.1:8000"``.
        quiet: show nothing (``--json`` output).
        stream: where to write (stderr); a terminal gets the rich form.
        interval_s: the plain form repeats an unchanged status this often.
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        what: str,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self._last_status: str | None = None
        self._last_line_at = 0.0
        self._status: Any = None

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def __enter__(self) -> WaitProgress:
        self.started = self.clock()
        if not self.quiet and self.stream.isatty():
            from rich.console import Console

            self._status = Console(file=self.stream).status(self.what)
            self._status.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.__exit__(exc_type, exc, tb)
            self._status = None

    def update(self, status: str) -> None:
        """Show ``status`` (the rich form at once; the plain form when a line is due)."""
        if self.quiet:
            return
        text = f"{self.what}: {status} ({self.elapsed_s():.0f} s)"
        if self._status is not None:
            self._status.update(text)
            return
        now = self.clock()
        if plain_line_due(status, self._last_status, now, self._last_line_at, self.interval_s):
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_status = status
            self._last_line_at = now
