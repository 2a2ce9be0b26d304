"""Background processes the CLI starts: pid/state files under ``SAGE_HOME``, start, stop.

A started process is recorded in ``<SAGE_HOME>/<name>/<name>.json`` with its pid, the
process start time (so a recycled pid is never mistaken for it), its URL and what the
command that started it wants to remember (``config``: never a secret); its output goes
to ``<SAGE_HOME>/<name>/<name>.log`` until the process sets up its own (rotated) log there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from sage.unified.sdk.config import sage_home

__all__ = [
    "DaemonFiles",
    "DaemonRecord",
    "python_argv",
    "running_record",
    "sage_home",
    "spawn",
    "tail_lines",
    "terminate",
    "wait_ready",
]


@dataclass(frozen=True)
class DaemonRecord:
    pid: int
    create_time: float
    url: str
    argv: list[str]
    started_at: float
    config: dict[str, Any] | None = None
    """What the starting command recorded about the process's configuration (no secret)."""


@dataclass(frozen=True)
class DaemonFiles:
    name: str

    @property
    def directory(self) -> Path:
        return sage_home() / self.name

    @property
    def record(self) -> Path:
        return self.directory / f"{self.name}.json"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def write(self, record: DaemonRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, self.record)

    def read(self) -> DaemonRecord | None:
        try:
            data = json.loads(self.record.read_text())
            return DaemonRecord(**data)
        except (OSError, ValueError, TypeError):
            return None

    def clear(self) -> None:
        self.record.unlink(missing_ok=True)


def _alive(record: DaemonRecord) -> bool:
    try:
        proc = psutil.Process(record.pid)
        same = abs(float(proc.create_time()) - record.create_time) < 0.5
        return same and bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def running_record(files: DaemonFiles) -> DaemonRecord | None:
    """The record of a live process, or ``None`` (a stale record is removed)."""
    record = files.read()
    if record is None:
        return None
    if _alive(record):
        return record
    files.clear()
    return None


def spawn(
    files: DaemonFiles,
    argv: Sequence[str],
    *,
    url: str,
    env: Mapping[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> DaemonRecord:
    """Start ``argv`` detached (own session), output appended to the log, and record it.

    Args:
        env: the whole environment of the process (default: this one's).
        config: kept in the record (see :class:`DaemonRecord`).
    """
    files.directory.mkdir(parents=True, exist_ok=True)
    with open(files.log, "ab") as log:
        log.write(
            f"\n--- started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ if env is None else env),
            close_fds=True,
        )
    create_time = psutil.Process(proc.pid).create_time()
    record = DaemonRecord(
        pid=proc.pid,
        create_time=create_time,
        url=url,
        argv=list(argv),
        started_at=time.time(),
        config=config,
    )
    files.write(record)
    return record


def wait_ready(
    record: DaemonRecord,
    not_ready_because: Callable[[], str | None],
    timeout_s: float,
    *,
    on_poll: Callable[[str], None] | None = None,
) -> str | None:
    """Poll ``not_ready_because`` (``None``: ready, else why not) until the process is
    ready. Returns ``None`` when ready, else why not.

    ``on_poll`` gets the latest status (``"not listening yet"``, ``"/readyz answered 503"``)
    after every poll, for a progress display.
    """
    deadline = time.monotonic() + timeout_s
    last = "not listening yet"
    while time.monotonic() < deadline:
        if on_poll is not None:
            on_poll(last)
        if not _alive(record):
            return "the process exited during start-up"
        why = not_ready_because()
        if why is None:
            return None
        last = why
        time.sleep(0.1)
    return f"not ready after {timeout_s:.0f} s ({last})"


def terminate(record: DaemonRecord, timeout_s: float, signum: int = signal.SIGTERM) -> bool:
    """Send ``signum``, wait up to ``timeout_s``, then SIGKILL the process group.

    Returns whether the process was there to stop.
    """
    try:
        proc = psutil.Process(record.pid)
    except psutil.NoSuchProcess:
        return False
    try:
        proc.send_signal(signum)
        proc.wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        try:
            os.killpg(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except psutil.Error:
            pass
    except psutil.NoSuchProcess:
        pass
    return True


def tail_lines(path: Path, count: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024 * max(1, count // 200 + 1)))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return data.splitlines()[-count:] if count > 0 else []


def python_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sage.unified.cli", *args]
