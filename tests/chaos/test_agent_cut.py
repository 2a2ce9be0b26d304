"""Agent ↔ coordinator cut: the agent stops reporting while its engine keeps serving.

``SIGSTOP`` freezes the agent (its heartbeats stop) but not the engine, which runs in
its own session. The coordinator must drop the host only once the lease lapses, not
flap, and take it back within one heartbeat of the agent resuming.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

TTL_S = 2.0
HEARTBEAT_S = 0.5
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s")


def _routable(url: str) -> set[str]:
    table = httpx.get(f"{url}/v1/management/backends", timeout=5).json()
    return {b["id"] for b in table["backends"]}


class _Sampler:
    """Samples whether ``engine_id`` is in the coordinator's table every 100 ms."""

    def __init__(self, url: str, engine_id: str) -> None:
        self.url = url
        self.engine_id = engine_id
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                try:
                    table = client.get(f"{self.url}/v1/management/backends").json()
                    present = any(b["id"] == self.engine_id for b in table["backends"])
                    self.samples.append((time.monotonic(), present))
                except httpx.HTTPError:
                    pass
                self._stop.wait(0.1)

    def transitions(self) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        for at, present in self.samples:
            if not out or out[-1][1] != present:
                out.append((at, present))
        return out

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_frozen_agent_loses_its_host_after_the_ttl_without_flapping_and_comes_back(
    start_coordinator, start_agent, start_gateway
) -> None:  # type: ignore[no-untyped-def]
    coordinator = start_coordinator(
        env={
            "SAGE_COORDINATOR_LEASE_TTL_S": str(TTL_S),
            "SAGE_COORDINATOR_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "SAGE_COORDINATOR_SWEEP_INTERVAL_S": "0.1",
        }
    )
    agent = start_agent(
        coordinator.url,
        env={
            "SAGE_AGENT_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
        },
    )
    gateway = start_gateway("--coordinator", coordinator.url)
    spec = {"model": "tiny", "runtime": "simulated", "simulator": {"ttft_ms": 1, "itl_ms": 1}}
    started = httpx.post(
        f"{gateway.url}/v1/management/engines/start", json={"spec": spec}, timeout=15
    )
    assert started.status_code == 202, started.text
    engine_id = started.json()["id"]
    _wait(lambda: engine_id in _routable(coordinator.url), 30, "the engine is routable")
    engine = httpx.get(f"{coordinator.url}/v1/management/engines/{engine_id}", timeout=5).json()
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=5).status_code == 200

    with _Sampler(coordinator.url, engine_id) as sampler:
        time.sleep(0.5)
        os.kill(agent.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            _wait(lambda: engine_id not in _routable(coordinator.url), 15, "the host is lost")
            lost_after = time.monotonic() - stopped_at
            agents = httpx.get(f"{coordinator.url}/v1/management/agents", timeout=5).json()
            assert [a["lost"] for a in agents["agents"] if a["agent_id"] == "a1"] == [True]
            # The engine itself never stopped serving: only its host's reports did.
            assert httpx.get(f"{engine['url']}/health", timeout=5).status_code == 200
            # The gateway knows the model but has no live engine for it: 503, not 404.
            unavailable = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=5)
            assert unavailable.status_code == 503, unavailable.text
            assert int(unavailable.headers["retry-after"]) > 0
            time.sleep(1.0)  # stays lost while the agent is frozen
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        _wait(lambda: engine_id in _routable(coordinator.url), 15, "the host is back")
        back_after = time.monotonic() - resumed_at
        time.sleep(1.0)

    print(f"lost after {lost_after:.2f} s, back after {back_after:.2f} s")
    # Never lost before the lease could have lapsed (last report ≤ one heartbeat before
    # the freeze), and lost soon after it did.
    assert TTL_S - HEARTBEAT_S - 0.1 <= lost_after < TTL_S + 2.0, lost_after
    assert back_after < HEARTBEAT_S + 1.5, back_after
    # No flapping: present → absent → present, one transition each way.
    assert [present for _, present in sampler.transitions()] == [True, False, True]
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=5).status_code == 200
