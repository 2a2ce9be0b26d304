"""``sage studio start|stop|status`` in subprocesses, with SAGE_HOME isolated."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

SAGE = str(Path(sys.executable).parent / "sage")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def env(sage_home: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_GATEWAY")}
    return {**clean, "SAGE_HOME": str(sage_home), "SAGE_GATEWAY_AGENT_PORT": str(_free_port())}


def sage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGE, *args], env=env, capture_output=True, text=True, timeout=120)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_studio_starts_a_gateway_serves_the_console_and_stops_only_it(env: dict[str, str]) -> None:
    port = _free_port()
    started = sage(env, "studio", "start", "--port", str(port), "--no-browser")
    try:
        _check_started_studio(env, started, port)
    finally:
        sage(env, "gateway", "stop", "--timeout", "10")


def _check_started_studio(
    env: dict[str, str], started: subprocess.CompletedProcess[str], port: int
) -> None:
    assert started.returncode == 0, started.stdout + started.stderr
    url = f"http://127.0.0.1:{port}/studio/"
    assert f"Studio: {url}" in started.stdout
    page = httpx.get(url, timeout=5)
    assert page.status_code == 200
    assert "SAGE Studio" in page.text
    # The control plane and the local agent run, as with `sage gateway start`.
    agents = httpx.get(f"http://127.0.0.1:{port}/v1/management/agents", timeout=5).json()
    assert len(agents["agents"]) == 1

    again = sage(env, "studio", "start", "--no-browser")
    assert again.returncode == 0, again.stderr
    assert f"Studio: {url}" in again.stdout
    status = sage(env, "studio", "status")
    assert status.returncode == 0
    assert "console: ok" in status.stdout
    assert "started by Studio" in status.stdout

    stopped = sage(env, "studio", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not _listening(port)
    assert sage(env, "studio", "status").returncode == 2


def test_studio_reuses_a_running_gateway_and_leaves_it_running(env: dict[str, str]) -> None:
    port = _free_port()
    env = {**env, "SAGE_GATEWAY_PORT": str(port)}
    assert sage(env, "gateway", "start").returncode == 0
    try:
        started = sage(env, "studio", "start", "--no-browser")
        assert started.returncode == 0, started.stderr
        assert f"Studio: http://127.0.0.1:{port}/studio/" in started.stdout
        assert "did not start" in started.stdout
        stopped = sage(env, "studio", "stop")
        assert "left running" in stopped.stdout
        assert _listening(port)
    finally:
        sage(env, "gateway", "stop", "--timeout", "10")


def test_studio_refuses_other_addresses_without_tokens(env: dict[str, str]) -> None:
    refused = sage(env, "studio", "start", "--host", "0.0.0.0", "--no-browser")
    assert refused.returncode == 2
    assert "admin token" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
