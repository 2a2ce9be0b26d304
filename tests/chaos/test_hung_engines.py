"""Engines that hang, die under load, and gateways that restart, with real processes.

- A SIGSTOPped engine keeps its port open and never answers: the gateway finds it itself
  (no byte for the stall deadline, then ``/health`` unanswered), retries its requests
  elsewhere and takes it out of routing; the agent finds it too, kills and restarts it.
- Every engine hung: a 503 with ``Retry-After`` within the stall deadline.
- ``kill -9`` of one engine of two under 40 concurrent requests: no client error (the
  requests it dropped move on outside the retry budget).
- A gateway restarted under load never answers 404 for a model it simply has not seen
  again yet.
- Static mode with a dead backend: 503 with ``Retry-After``, not 404.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
STALL = {"SAGE_GATEWAY_STALL_TIMEOUT_S": "1.5", "SAGE_GATEWAY_STALL_PROBE_TIMEOUT_S": "0.5"}
FAST_AGENT = {
    "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
    "SAGE_AGENT_PROBE_TIMEOUT_S": "1",
    "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
    "SAGE_AGENT_RESTART_BACKOFF_INITIAL_S": "0.5",
}


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s")


class Load:
    """Client threads sending ``CHAT`` until stopped; every status is kept."""

    def __init__(self, url: str, clients: int, body: dict[str, Any] = CHAT) -> None:
        self.url = url
        self.body = body
        self.statuses: list[int | str] = []
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def _loop(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status: int | str = client.post(
                        f"{self.url}/v1/chat/completions", json=self.body
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self._lock:
                    self.statuses.append(status)
                    self.latencies.append(time.monotonic() - started)

    @contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=60)

    def errors(self) -> list[int | str]:
        return [s for s in self.statuses if s != 200]


def _start_engines(gateway: str, count: int, **simulator: Any) -> list[dict[str, Any]]:
    spec = {"model": "tiny", "runtime": "simulated", "simulator": {"ttft_ms": 5, **simulator}}
    ids = []
    for _ in range(count):
        started = httpx.post(
            f"{gateway}/v1/management/engines/start", json={"spec": spec}, timeout=15
        )
        assert started.status_code == 202, started.text
        ids.append(started.json()["id"])

    def routable() -> bool:
        table = httpx.get(f"{gateway}/v1/management/backends", timeout=5).json()
        return set(ids) <= {b["id"] for b in table["backends"]}

    _wait(routable, 30, "the engines are routable")
    return [httpx.get(f"{gateway}/v1/management/engines/{i}", timeout=5).json() for i in ids]


def _engine(gateway: str, engine_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{gateway}/v1/management/engines/{engine_id}", timeout=5).json())


def test_a_sigstopped_engine_is_found_by_the_gateway_and_the_agent(start_gateway) -> None:  # type: ignore[no-untyped-def]
    # The agent's default probing (a hung engine is ERROR within about 6 s): the gateway
    # must not wait for it.
    gateway = start_gateway(env=STALL).url
    victim, _other = _start_engines(gateway, 2)
    with Load(gateway, clients=4).running() as load:
        time.sleep(1.0)
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        detected = _wait(
            lambda: _engine(gateway, victim["id"])["state"] == "ERROR", 20, "the agent's ERROR"
        )
        restarted = _wait(
            lambda: _engine(gateway, victim["id"])["pid"] not in (None, victim["pid"]),
            30,
            "the engine killed and restarted",
        )
        time.sleep(1.0)
    sent = len(load.statuses)
    slowest = max(load.latencies)
    print(
        f"requests {sent}, errors {len(load.errors())}, slowest {slowest:.1f} s; agent: ERROR "
        f"{detected:.1f} s after SIGSTOP, restarted {restarted:.1f} s after that (total "
        f"{time.monotonic() - stopped_at:.1f} s)"
    )
    assert sent > 20
    assert load.errors() == []  # requests on the hung engine moved on
    # ... after the gateway's stall deadline (1.5 s) and probe (0.5 s), not when the
    # agent killed the engine.
    assert slowest < 4.5
    assert detected < 12.0


def test_every_engine_hung_is_a_503_within_the_stall_deadline(
    start_simulator, start_gateway, models_ready
) -> None:  # type: ignore[no-untyped-def]
    sims = [start_simulator("tiny", ttft_ms=1, itl_ms=1) for _ in range(2)]
    gateway = start_gateway("--backend", sims[0].url, "--backend", sims[1].url, env=STALL)
    models_ready(gateway.url, {"tiny"})
    for sim in sims:
        os.kill(sim.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=60)
        took = time.monotonic() - started
        again = time.monotonic()
        second = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=60)
        second_took = time.monotonic() - again
    finally:
        for sim in sims:
            os.kill(sim.proc.pid, signal.SIGCONT)
    print(f"first answer {answer.status_code} after {took:.1f} s, next {second_took:.2f} s")
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "no_backend_available"
    assert "retry-after" in answer.headers
    assert took < 1.5 * 2 + 0.5 * 2 + 3.0  # two stall deadlines and probes, with margin
    assert second.status_code == 503
    assert second_took < 1.0  # both are known to hang: refused at once


def test_kill_under_40_concurrent_requests_loses_none(
    start_simulator, start_gateway, models_ready
) -> None:  # type: ignore[no-untyped-def]
    # Each request takes about 2 s (20 tokens, 100 ms apart).
    sims = [start_simulator("tiny", ttft_ms=1, itl_ms=100, output_tokens=20) for _ in range(2)]
    gateway = start_gateway("--backend", sims[0].url, "--backend", sims[1].url)
    models_ready(gateway.url, {"tiny"})
    body = {**CHAT, "max_tokens": 20}
    statuses: list[int | str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            status: int | str = httpx.post(
                f"{gateway.url}/v1/chat/completions", json=body, timeout=60
            ).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    sims[0].proc.kill()
    for thread in threads:
        thread.join(timeout=60)
    print(f"40 requests, statuses {sorted(set(map(str, statuses)))}")
    assert statuses == [200] * 40


def test_a_gateway_restarted_under_load_never_answers_404(start_gateway, processes) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        agent_port = probe.getsockname()[1]
    env = {**FAST_AGENT, "SAGE_GATEWAY_AGENT_PORT": str(agent_port)}
    first = start_gateway(env=env, port=port)
    _start_engines(first.url, 1)
    with Load(first.url, clients=3).running() as load:
        time.sleep(0.5)
        first.proc.send_signal(signal.SIGTERM)  # engines keep running, as systemd restarts
        first.proc.wait(timeout=30)
        start_gateway(env=env, port=port)
        _wait(lambda: load.statuses[-3:] == [200, 200, 200], 30, "serving again")
        time.sleep(0.5)
    codes = {s for s in load.statuses if isinstance(s, int)}
    print(f"requests {len(load.statuses)}, outcomes {sorted(set(map(str, load.statuses)))}")
    assert 404 not in codes
    assert codes <= {200, 503}


def test_static_mode_with_a_dead_backend_is_503_with_retry_after(start_gateway) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # closed again: nothing listens there
    gateway = start_gateway("--backend", f"http://127.0.0.1:{dead}")
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "no_backend_available"
    assert "retry-after" in answer.headers
