"""Engine log files: one append-only file per engine, copytruncate rotation, tail.

Engines write straight to their file (the fd is the child's stdout and stderr), never
through a pipe to the agent: an agent that crashes or restarts cannot block an
engine on a full pipe or kill it with SIGPIPE, and adopted engines keep logging.

All functions here block on file I/O; call them through ``anyio.to_thread.run_sync``
from async code.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

__all__ = ["engine_log_path", "open_engine_log", "rotate_all", "rotate_if_needed", "tail"]

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_BLOCK = 8192


def engine_log_path(log_dir: Path, engine_id: str) -> Path:
    """The log file of ``engine_id`` in ``log_dir``.

    Raises:
        ValueError: the id could escape ``log_dir`` (it must look like an engine id).
    """
    if not _SAFE_ID.match(engine_id) or ".." in engine_id:
        raise ValueError(f"engine id {engine_id!r} cannot name a log file")
    return log_dir / f"{engine_id}.log"


def open_engine_log(path: Path) -> int:
    """Open ``path`` for appending (creating it and its folder) and return the fd.

    The caller owns the fd and closes it once the child has been started. ``O_APPEND``
    makes every write land at the current end, which keeps copytruncate rotation
    correct while the child writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _backup(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def rotate_if_needed(path: Path, *, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` when it holds at least ``max_bytes``: copy, then truncate.

    ``path.1`` is the newest backup, ``path.<backups>`` the oldest; older ones are
    dropped. With ``backups=0`` the file is only truncated. Lines the child writes
    between the copy and the truncate are lost (the usual copytruncate trade-off,
    accepted so the child never has to reopen its file).

    Returns:
        Whether the file was rotated. A missing file is not an error (``False``).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size < max_bytes:
        return False
    if backups > 0:
        _backup(path, backups).unlink(missing_ok=True)
        for n in range(backups - 1, 0, -1):
            older = _backup(path, n)
            if older.exists():
                older.replace(_backup(path, n + 1))
        shutil.copyfile(path, _backup(path, 1))
    # Truncate through a fresh fd; the child's O_APPEND fd continues at the new end.
    with open(path, "r+b") as handle:
        handle.truncate(0)
    return True


def rotate_all(paths: Iterable[Path], *, max_bytes: int, backups: int) -> None:
    """:func:`rotate_if_needed` for each of ``paths``; a file that fails is logged and
    skipped, so one bad file never stops the rotation of the others."""
    for path in paths:
        try:
            rotate_if_needed(path, max_bytes=max_bytes, backups=backups)
        except OSError as exc:
            log.warning("could not rotate %s: %s", path, exc)


def _tail_lines(path: Path, count: int) -> list[str]:
    if count <= 0:
        return []
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; size needed first
    except FileNotFoundError:
        return []
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        position = end
        # A trailing newline ends the last line, it does not start an empty one.
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    return lines[-count:]


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of the log, oldest first, without line endings.

    Reads backwards from the end in blocks, so the cost does not grow with the file.
    When the current file holds fewer lines (it was just rotated), the rest comes
    from the newest backup ``path.1``. A missing file gives ``[]``.
    """
    if lines <= 0:
        return []
    current = _tail_lines(path, lines)
    if len(current) < lines:
        older = _tail_lines(_backup(path, 1), lines - len(current))
        return older + current
    return current
