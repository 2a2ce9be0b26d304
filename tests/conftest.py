"""Shared fixtures.

Every async test runs on asyncio and trio (``anyio_backend``) unless it pins one.
``processes`` starts real child processes and always reaps them; ``wait_http``
polls a URL until it answers. Tests import nothing from this folder directly
(pytest runs in importlib mode), so shared helpers are fixtures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import psutil
import pytest


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    backend: tuple[str, dict[str, object]] = request.param
    return backend


@pytest.fixture
def sage_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated SAGE_HOME for the test (also exported to child processes)."""
    home = tmp_path / "sage-home"
    home.mkdir()
    monkeypatch.setenv("SAGE_HOME", str(home))
    return home


class ProcessGroup:
    """Child processes started by a test; each in its own session, all killed at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, name: str = "proc"
    ) -> subprocess.Popen[bytes]:
        log = open(self._log_dir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def python(
        self, *args: str, env: dict[str, str] | None = None, name: str = "py"
    ) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, *args], env=env, name=name)

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.procs.index(proc)
        for path in self._log_dir.glob(f"*-{index}.log"):
            return path.read_text(errors="replace")
        return ""

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=10)


def reap_by_sage_home(root: Path) -> None:
    """Kill every process whose inherited ``SAGE_HOME`` lies under ``root``.

    Engines run in their own session so that they outlive their agent (by design), so
    killing an agent's or gateway's process group leaves them serving and holding ports
    of the 8900-8999 range. Each is killed by pid, with its process group.
    """
    prefix = str(root)
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue  # pytest itself may carry the test's SAGE_HOME (the sage_home fixture)
        try:
            if not proc.environ().get("SAGE_HOME", "").startswith(prefix):
                continue
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue  # gone already, or not ours to read


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    log_dir = tmp_path / "proc-logs"
    log_dir.mkdir()
    group = ProcessGroup(log_dir)
    try:
        yield group
    finally:
        group.kill_all()
        reap_by_sage_home(tmp_path)


def _wait_http(url: str, timeout: float = 15.0, status: int | None = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Exception | str = "no attempt"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=1.0)
            if status is None or response.status_code == status:
                return response
            last = f"status {response.status_code}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status} within {timeout} s (last: {last})")


@pytest.fixture
def wait_http() -> Callable[..., httpx.Response]:
    """``wait_http(url, timeout=15, status=200)``: poll until the URL answers."""
    return _wait_http
