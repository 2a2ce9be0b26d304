"""The original SAGE acceptance criteria, end to end through the real ``sage`` CLI and
the SDK (the ones not already in test_cli.py / test_sdk_with_gateway.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sage.unified.sdk import UnifiedInferenceClient

pytestmark = pytest.mark.slow

SAGE = str(Path(sys.executable).parent / "sage")
PROBE_S = 0.3
MSGS = [{"role": "user", "content": "hello"}]


def _sage_engines(gateway_url: str) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [SAGE, "llm", "engine", "list", "--json"],
        env={**os.environ, "SAGE_GATEWAY_URL": gateway_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {e["id"]: e for e in json.loads(result.stdout)["engines"]}


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s")


def _register(gateway_url: str, engine_url: str, engine_id: str) -> None:
    response = httpx.post(
        f"{gateway_url}/v1/management/engines/register",
        json={"model": "tiny", "url": engine_url, "id": engine_id},
        timeout=10,
    )
    assert response.status_code == 201, response.text


def _routable(url: str) -> set[str]:
    table = httpx.get(f"{url}/v1/management/backends", timeout=5).json()
    return {b["id"] for b in table["backends"]}


def test_three_failed_health_checks_turn_an_engine_error_in_sage_engine_list(
    start_simulator, start_gateway
) -> None:  # type: ignore[no-untyped-def]
    sim = start_simulator("tiny", enable_control=True)
    gateway = start_gateway(env={"SAGE_COORDINATOR_PROBE_INTERVAL_S": str(PROBE_S)}).url
    _register(gateway, sim.url, "ext-1")
    _wait(lambda: _sage_engines(gateway)["ext-1"]["state"] == "READY", 20, "READY in the CLI")

    assert httpx.post(f"{sim.url}/sim/config", json={"healthy": False}).status_code == 200
    turned = time.monotonic()
    engine = _wait(
        lambda: (e := _sage_engines(gateway)["ext-1"])["state"] == "ERROR" and e,
        20,
        "ERROR in the CLI",
    )
    # Three probes PROBE_S apart: not after the first failure.
    assert time.monotonic() - turned >= 2 * PROBE_S - 0.1
    assert "3 consecutive failed health probes" in engine["reason"], engine
    assert "ext-1" not in _routable(gateway)
    chat = {"model": "tiny", "messages": MSGS}
    assert httpx.post(f"{gateway}/v1/chat/completions", json=chat, timeout=5).status_code == 503

    # Healthy again → READY again, without operator action.
    assert httpx.post(f"{sim.url}/sim/config", json={"healthy": True}).status_code == 200
    _wait(lambda: _sage_engines(gateway)["ext-1"]["state"] == "READY", 20, "READY again")
    assert "ext-1" in _routable(gateway)


def test_a_backend_going_down_sends_the_clients_requests_to_another(
    start_simulator, start_gateway
) -> None:  # type: ignore[no-untyped-def]
    sims = [start_simulator("tiny", enable_control=True, ttft_ms=1, itl_ms=1) for _ in range(2)]
    gateway = start_gateway(env={"SAGE_COORDINATOR_PROBE_INTERVAL_S": str(PROBE_S)}).url
    _register(gateway, sims[0].url, "ext-a")
    _register(gateway, sims[1].url, "ext-b")
    _wait(lambda: _routable(gateway) == {"ext-a", "ext-b"}, 20, "both routable")

    def served(index: int) -> int:
        stats = httpx.get(f"{sims[index].url}/sim/stats", timeout=5).json()
        return int(stats["inference_requests"])

    retries: list[str] = []
    with UnifiedInferenceClient(
        control_plane_url=gateway,
        refresh_interval_s=5,
        on_retry=lambda event: retries.append(event.url),
    ) as client:
        for _ in range(6):
            assert client.chat(MSGS, model="tiny", max_tokens=2).text
        os.kill(sims[0].proc.pid, signal.SIGKILL)
        sims[0].proc.wait()
        before = served(1)
        for _ in range(20):
            result = client.chat(MSGS, model="tiny", max_tokens=2)
            assert result.text
            assert result.model == "tiny"
        assert served(1) - before == 20  # every request reached the surviving backend
        assert all(sims[0].url in url for url in retries), retries
        # The control plane finds the dead one by its probes; the client's table follows
        # and it stops trying the dead backend at all.
        _wait(lambda: _routable(gateway) == {"ext-b"}, 20, "the dead backend leaves the table")
        time.sleep(1.0)
        retries.clear()
        for _ in range(5):
            assert client.chat(MSGS, model="tiny", max_tokens=2).text
        assert retries == []
