"""Fixtures that start real processes on loopback: simulated engines and gateways."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


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
    """``start_gateway(*cli_flags, env={...})``: ``sage gateway run`` on a free port, ready."""

    def start(
        *flags: str, env: dict[str, str] | None = None, ready_path: str = "/readyz"
    ) -> Server:
        port = _free_port()
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
    import time

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
