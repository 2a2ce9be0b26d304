"""An engine whose process exits at once: ERROR with the reason, capped restarts,
never in the routing table."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_engine_that_exits_at_once_is_error_with_reason_and_never_routed(
    start_gateway, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken-runtime"
    broken.write_text("#!/bin/sh\necho 'fatal: weights not found for model tiny' >&2\nexit 3\n")
    broken.chmod(0o755)
    gateway = start_gateway(
        env={
            "SAGE_AGENT_SIMULATOR_PYTHON": str(broken),
            "SAGE_AGENT_RESTART_MAX": "2",
            "SAGE_AGENT_RESTART_BACKOFF_INITIAL_S": "0.2",
            "SAGE_AGENT_RESTART_BACKOFF_MAX_S": "0.5",
            "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
            "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
        }
    ).url
    ever_routed: list[str] = []
    stop = threading.Event()

    def watch_table() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                table = client.get(f"{gateway}/v1/management/backends").json()
                ever_routed.extend(b["id"] for b in table["backends"])
                stop.wait(0.05)

    watcher = threading.Thread(target=watch_table)
    watcher.start()
    try:
        spec = {"model": "tiny", "runtime": "simulated"}
        started = httpx.post(
            f"{gateway}/v1/management/engines/start", json={"spec": spec}, timeout=15
        )
        assert started.status_code == 202, started.text
        engine_id = started.json()["id"]
        deadline = time.monotonic() + 30
        engine: dict[str, object] = {}
        while time.monotonic() < deadline:
            engine = httpx.get(f"{gateway}/v1/management/engines/{engine_id}", timeout=5).json()
            if engine["state"] == "ERROR" and "restarts exhausted" in str(engine["reason"]):
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"restarts not exhausted: {engine}")
        time.sleep(1.5)  # no further restart after the cap
    finally:
        stop.set()
        watcher.join(timeout=10)
    final = httpx.get(f"{gateway}/v1/management/engines/{engine_id}", timeout=5).json()
    assert final["state"] == "ERROR"
    reason = str(final["reason"])
    assert "exited with code 3" in reason, reason
    assert "weights not found" in reason, reason  # the engine's last log line
    assert final["restarts"] == 2
    assert final["incarnation"] == 2
    assert final["pid"] is None
    assert ever_routed == []
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(f"{gateway}/v1/chat/completions", json=chat, timeout=5)
    assert response.status_code == 503, response.text
