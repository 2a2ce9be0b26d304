"""Fixtures for the fault-injection tests: real processes on loopback.

The simulator and gateway fixtures are the ones of ``tests/integration/conftest.py``
(loaded from there, not copied); this file adds a standalone coordinator and a
standalone agent, both started through the real ``sage`` command.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "sage_tests_integration_conftest",
    Path(__file__).resolve().parent.parent / "integration" / "conftest.py",
)
assert _spec is not None
assert _spec.loader is not None
_integration = importlib.util.module_from_spec(_spec)
# dataclasses look their module up in sys.modules while the class is created.
sys.modules[_spec.name] = _integration
_spec.loader.exec_module(_integration)

start_simulator = _integration.start_simulator
start_gateway = _integration.start_gateway
models_ready = _integration.models_ready
Server = _integration.Server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def start_coordinator(processes, wait_http, tmp_path: Path) -> Callable[..., object]:  # type: ignore[no-untyped-def]
    """``start_coordinator(port=None, db=None, env={})``: ``sage coordinator run``, healthy."""

    def start(
        port: int | None = None, *, db: Path | None = None, env: dict[str, str] | None = None
    ) -> object:
        port = port or free_port()
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
        port = free_port()
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
