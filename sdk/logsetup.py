"""One logging set-up for the gateway, coordinator and agent processes.

- Every logger follows the configured level, libraries' included: the apps are built
  with Litestar's ``logging_config=None``, since Litestar's own set-up raised the root
  logger to INFO behind the operator's back (88 of 102 lines of a gateway log at
  ``warning`` were httpx's request lines).
- httpx and httpcore log one INFO line per request between components (reports, probes,
  scrapes: about 100 lines every 30 s with 3 engines). They show at ``debug`` only.
- With a log file, the file rotates by size (``max_bytes``, ``backups`` kept) and the
  process's stdout and stderr point at it too, before and after each rotation: a
  traceback or a library's ``print`` lands in the same file and rotates with it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# One line per HTTP request at INFO; below the operator's interest unless debugging.
_REQUEST_LOGGERS = ("httpx", "httpcore")


class _ProcessLogFile(logging.handlers.RotatingFileHandler):
    """A size-rotated log file that also receives the process's stdout and stderr."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._capture_stdio()

    def doRollover(self) -> None:
        super().doRollover()
        self._capture_stdio()

    def _capture_stdio(self) -> None:
        if self.stream is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)


def configure_logging(
    level: str,
    *,
    log_file: Path | None = None,
    max_bytes: int = 10 * 2**20,
    backups: int = 3,
) -> None:
    """Send every log record at ``level`` or above to stderr, or to ``log_file``.

    Replaces whatever handlers the root logger had (call it once, at process start).

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        log_file: a file to write instead of stderr; rotated when it would exceed
            ``max_bytes``, keeping ``backups`` old files (``name.log.1`` is the newest).
        max_bytes: size at which the file rotates.
        backups: rotated files kept.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _ProcessLogFile(log_file, max_bytes=max_bytes, backups=backups)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
