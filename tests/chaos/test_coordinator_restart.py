"""A standalone coordinator killed and restarted under client load.

The gateway (remote mode) keeps routing on its last table while the coordinator is
down; the restarted coordinator rebuilds the same table from its database and the
agents' next reports, within one heartbeat, even when the database is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

HEARTBEAT_S = 0.5
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what} within {timeout} s")


def _routable(url: str) -> set[str]:
    response = httpx.get(f"{url}/v1/management/backends", timeout=5)
    if response.status_code == 503:  # settling after a restart: not published yet
        assert response.json()["error"]["code"] == "coordinator_settling"
        return set()
    return {b["id"] for b in response.json()["backends"]}


class _Load:
    """Two closed-loop clients through the gateway, recording every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(timeout=20) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.url}/v1/chat/completions", json=CHAT)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.errors.append(f"{response.status_code} {response.text}")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                time.sleep(0.01)

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.mark.parametrize("database", ["kept", "deleted"])
def test_coordinator_killed_and_restarted_under_load(
    start_coordinator, start_agent, start_gateway, tmp_path: Path, database: str
) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "coord.db"
    env = {
        "SAGE_COORDINATOR_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "SAGE_COORDINATOR_LEASE_TTL_S": "3",
        "SAGE_COORDINATOR_RESTART_GRACE_S": "2",
    }
    coordinator = start_coordinator(db=db, env=env)
    start_agent(
        coordinator.url,
        env={
            "SAGE_AGENT_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
        },
    )
    gateway = start_gateway("--coordinator", coordinator.url)
    spec = {"model": "tiny", "runtime": "simulated", "simulator": {"ttft_ms": 1, "itl_ms": 1}}
    ids = set()
    for _ in range(2):
        started = httpx.post(
            f"{gateway.url}/v1/management/engines/start", json={"spec": spec}, timeout=15
        )
        assert started.status_code == 202, started.text
        ids.add(started.json()["id"])
    _wait(lambda: _routable(coordinator.url) == ids, 30, "both engines routable")

    with _Load(gateway.url) as load:
        time.sleep(0.5)
        os.kill(coordinator.proc.pid, signal.SIGKILL)
        coordinator.proc.wait()
        if database == "deleted":
            for path in tmp_path.glob("coord.db*"):  # with -wal / -shm companions
                path.unlink()
        time.sleep(1.0)  # the gateway serves from its last table meanwhile
        restarted = start_coordinator(coordinator.port, db=db, env=env)
        up_at = time.monotonic()
        _wait(lambda: _routable(restarted.url) == ids, 15, "the table converges")
        converged_after = time.monotonic() - up_at
        time.sleep(1.5)  # the gateway picks up the rebuilt table and keeps serving
    assert load.ok > 20
    assert load.errors == []
    engines = httpx.get(f"{restarted.url}/v1/management/engines", timeout=5).json()["engines"]
    assert {e["id"] for e in engines} == ids
    assert {e["state"] for e in engines} == {"READY"}
    # The gateway reconnects on its own (jittered backoff, capped at 10 s).
    _wait(
        lambda: httpx.get(f"{gateway.url}/readyz", timeout=5).json()["control_plane_reachable"],
        20,
        "the gateway reaches the restarted coordinator",
    )
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=5).status_code == 200
    # The agent retries no slower than its heartbeat, so the table is whole again within
    # about one heartbeat of the coordinator's return (plus its start-up).
    assert converged_after < HEARTBEAT_S + 2.0
