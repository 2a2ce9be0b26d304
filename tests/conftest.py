"""Shared fixtures.

Every async test runs on asyncio and trio (``anyio_backend``) unless it pins one.
``processes`` starts real child processes and always reaps them; ``wait_http``
polls a URL until it answers; ``start_simulator``, ``start_gateway``,
``start_coordinator`` and ``start_agent`` run the real programs on loopback for the
integration, chaos and fuzz suites, and ``models_ready`` waits for a gateway's models.
Tests import nothing from this folder directly (pytest runs in importlib mode), so
shared helpers are fixtures.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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


# -- real processes on loopback: simulated engines, gateways, coordinators, agents --


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def start_simulator(processes, wait_http) -> Callable[..., Server]:  # type: ignore[no-untyped-def]
    """``start_simulator(model="tiny", **flags)``: a simulated engine on a free port, ready."""

    def start(model: str = "tiny", *, wait: bool = True, **flags: object) -> Server:
        port = _free_port()
        argv = ["-m", "sage.unified.agent.simulator", "--model", model, "--port", str(port)]
        for name, value in flags.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, str(value)]
        proc = processes.python(*argv, name=f"sim-{model}")
        server = Server(proc, port)
        if wait:
            wait_http(f"{server.url}/v1/models", timeout=20)
        return server

    return start


@pytest.fixture
def start_gateway(processes, wait_http, sage_home: Path) -> Callable[..., Server]:  # type: ignore[no-untyped-def]
    """``start_gateway(*cli_flags, env={...}, port=None)``: ``sage gateway run`` on ``port``
    (a free one by default), ready."""

    def start(
        *flags: str,
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
        port: int | None = None,
    ) -> Server:
        port = port or _free_port()
        merged = {
            "SAGE_HOME": str(sage_home),
            "SAGE_GATEWAY_EXPOSE_BACKEND_HEADER": "true",
            "SAGE_GATEWAY_AGENT_PORT": str(_free_port()),
            **(env or {}),
        }
        proc = processes.python(
            "-m",
            "sage.unified.cli",
            "gateway",
            "run",
            "--port",
            str(port),
            *flags,
            env=merged,
            name="gateway",
        )
        server = Server(proc, port)
        wait_http(f"{server.url}{ready_path}", timeout=30)
        return server

    return start


def wait_for_models(url: str, models: set[str], timeout: float = 15.0) -> None:
    """Poll the gateway's /v1/models until it lists ``models``."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        try:
            data = httpx.get(f"{url}/v1/models", timeout=2).json()
            seen = {item["id"] for item in data["data"]}
            if models <= seen:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"gateway lists {sorted(seen)}, expected {sorted(models)}")


@pytest.fixture
def models_ready() -> Callable[[str, set[str]], None]:
    return wait_for_models


@pytest.fixture
def start_coordinator(processes, wait_http, tmp_path: Path) -> Callable[..., object]:  # type: ignore[no-untyped-def]
    """``start_coordinator(port=None, db=None, env={})``: ``sage coordinator run``, healthy."""

    def start(
        port: int | None = None, *, db: Path | None = None, env: dict[str, str] | None = None
    ) -> object:
        port = port or _free_port()
        merged = {
            "SAGE_COORDINATOR_DB_PATH": str(db or tmp_path / "coordinator.db"),
            **(env or {}),
        }
        proc = processes.python(
            "-m",
            "sage.unified.cli",
            "coordinator",
            "run",
            "--port",
            str(port),
            env=merged,
            name="coordinator",
        )
        server = Server(proc, port)
        wait_http(f"{server.url}/health", timeout=30)
        return server

    return start


@pytest.fixture
def start_agent(processes, wait_http, tmp_path: Path) -> Callable[..., object]:  # type: ignore[no-untyped-def]
    """``start_agent(coordinator_url, agent_id="a1", env={})``: ``sage agent run``, ready."""

    def start(
        coordinator_url: str, agent_id: str = "a1", env: dict[str, str] | None = None
    ) -> object:
        port = _free_port()
        home = tmp_path / f"agent-{agent_id}"
        home.mkdir(exist_ok=True)
        merged = {"SAGE_HOME": str(home), "SAGE_AGENT_AGENT_ID": agent_id, **(env or {})}
        proc = processes.python(
            "-m",
            "sage.unified.cli",
            "agent",
            "run",
            "--coordinator",
            coordinator_url,
            "--port",
            str(port),
            env=merged,
            name=f"agent-{agent_id}",
        )
        server = Server(proc, port)
        wait_http(f"{server.url}/readyz", timeout=30)
        return server

    return start
