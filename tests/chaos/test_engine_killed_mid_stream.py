"""``kill -9`` of an engine in the middle of a stream, with the control plane
(embedded coordinator + local agent): the stream ends at once with an in-band error,
the engine leaves routing, is restarted and only routed again once it answers."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

FAST_AGENT = {
    "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
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


def _routable(url: str) -> dict[str, dict[str, Any]]:
    table = httpx.get(f"{url}/v1/management/backends", timeout=5).json()
    return {b["id"]: b for b in table["backends"]}


def test_engine_killed_mid_stream_errors_in_band_and_returns_only_when_serving(
    start_gateway,
) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(env=FAST_AGENT).url
    spec = {
        "model": "tiny",
        "runtime": "simulated",
        "simulator": {"ttft_ms": 5, "itl_ms": 100, "output_tokens": 100, "startup_delay_s": 1},
    }
    started = httpx.post(f"{gateway}/v1/management/engines/start", json={"spec": spec}, timeout=15)
    assert started.status_code == 202, started.text
    engine_id = started.json()["id"]
    _wait(lambda: engine_id in _routable(gateway), 30, "the engine is routable")
    victim = httpx.get(f"{gateway}/v1/management/engines/{engine_id}", timeout=5).json()

    events: list[str] = []
    killed_at = 0.0
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{gateway}/v1/chat/completions", json={**body, "max_tokens": 100}, timeout=10
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 3:
                os.kill(victim["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
    ended_after = time.monotonic() - killed_at
    assert killed_at
    assert ended_after < 1.0, ended_after
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "stream_interrupted"

    gone = _wait(lambda: engine_id not in _routable(gateway), 10, "the engine leaves routing")
    assert time.monotonic() - killed_at < 4.0, gone

    # Restarted (same id, next incarnation). Its simulator keeps its port closed for 1 s:
    # every time the table lists it again, the engine must already answer.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        backend = _routable(gateway).get(engine_id)
        if backend is not None:
            assert httpx.get(f"{backend['url']}/health", timeout=5).status_code == 200
            models = httpx.get(f"{backend['url']}/v1/models", timeout=5).json()
            assert "tiny" in {m["id"] for m in models["data"]}
            break
        time.sleep(0.02)
    else:
        raise TimeoutError("the engine was not routable again within 30 s")
    engine = httpx.get(f"{gateway}/v1/management/engines/{engine_id}", timeout=5).json()
    assert engine["state"] == "READY"
    assert engine["incarnation"] == victim["incarnation"] + 1
    assert engine["pid"] != victim["pid"]
    chat = httpx.post(
        f"{gateway}/v1/chat/completions",
        json={**body, "stream": False, "max_tokens": 2},
        timeout=10,
    )
    assert chat.status_code == 200, chat.text
