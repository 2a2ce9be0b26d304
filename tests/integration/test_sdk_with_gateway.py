"""UnifiedInferenceClient against real gateways, a real control plane and simulated engines."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from sage.unified.sdk import NoBackendAvailableError, UnifiedInferenceClient

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "hello"}]


def test_failover_to_the_next_gateway_when_the_one_in_use_dies(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny")
    first = start_gateway("--backend", sim.url)
    second = start_gateway("--backend", sim.url)
    models_ready(first.url, {"tiny"})
    models_ready(second.url, {"tiny"})
    with UnifiedInferenceClient(gateway_urls=[first.url, second.url], timeout=20) as client:
        assert client.chat(MESSAGES, model="tiny", max_tokens=2).text
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        for _ in range(5):
            assert client.chat(MESSAGES, model="tiny", max_tokens=2).text
        stream = client.chat(MESSAGES, model="tiny", stream=True, max_tokens=3)
        with stream:
            assert "".join(stream)
        assert stream.finish_reason is not None


def test_an_engine_started_after_the_client_is_used_within_a_second(start_gateway) -> None:
    gateway = start_gateway(env={"SAGE_AGENT_PROBE_INTERVAL_S": "0.5"}).url
    with UnifiedInferenceClient(control_plane_url=gateway, timeout=20) as client:
        with pytest.raises(NoBackendAvailableError) as info:
            client.chat(MESSAGES, model="late", max_tokens=2)
        assert "sage llm engine start" in str(info.value)

        spec = {"model": "late", "runtime": "simulated"}
        engine_id = httpx.post(
            f"{gateway}/v1/management/engines/start", json={"spec": spec}, timeout=10
        ).json()["id"]
        deadline = time.monotonic() + 30
        while True:
            table = httpx.get(f"{gateway}/v1/management/backends", timeout=5).json()
            if any(b["id"] == engine_id for b in table["backends"]):
                ready_at = time.monotonic()
                break
            assert time.monotonic() < deadline, "engine never became routable"
            time.sleep(0.05)
        while True:
            try:
                result = client.chat(MESSAGES, model="late", max_tokens=2)
                break
            except NoBackendAvailableError:
                assert time.monotonic() - ready_at < 1.0, (
                    "the client did not see the new engine within 1 s"
                )
                time.sleep(0.05)
        assert result.text


def test_no_backend_gives_a_clear_error(start_gateway) -> None:
    gateway = start_gateway().url
    with (
        UnifiedInferenceClient(gateway_urls=gateway, timeout=10) as client,
        pytest.raises(NoBackendAvailableError) as info,
    ):
        client.chat(MESSAGES)
    assert "sage llm engine start" in str(info.value)
