"""A stream survives ``kill -9`` of its engine: the gateway continues it on another engine
(opt-in) and the client's text is intact up to the cut and beyond.

The simulator's next word depends only on the word before it, so the text an engine
continues from a partial answer is exactly the text the first one would have produced:
the spliced stream must equal an uninterrupted one, word for word.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

TOKENS = 40
BODY = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "tell me a story"}],
    "max_tokens": TOKENS,
    "ignore_eos": True,
}


def _text_of_stream(lines: list[str]) -> tuple[str, dict[str, object]]:
    text = ""
    final: dict[str, object] = {}
    for line in lines:
        if not line.startswith("data: {"):
            continue
        event = json.loads(line.removeprefix("data: "))
        assert "error" not in event, event
        choice = event["choices"][0]
        text += choice["delta"].get("content") or ""
        if choice.get("finish_reason"):
            final = event
    return text, final


@pytest.mark.parametrize("opt_in", ["setting", "header"])
def test_a_stream_survives_kill_9_of_its_engine(
    start_simulator, start_gateway, models_ready, opt_in: str
) -> None:  # type: ignore[no-untyped-def]
    sims = [start_simulator("tiny", ttft_ms=5, itl_ms=60) for _ in range(2)]
    env = {"SAGE_GATEWAY_CONTINUATION_MODELS": "tiny"} if opt_in == "setting" else {}
    gateway = start_gateway("--backend", sims[0].url, "--backend", sims[1].url, env=env)
    models_ready(gateway.url, {"tiny"})
    expected = httpx.post(f"{sims[1].url}/v1/chat/completions", json=BODY, timeout=30).json()[
        "choices"
    ][0]["message"]["content"]

    headers = {"x-sage-continue": "1"} if opt_in == "header" else {}
    lines: list[str] = []
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={**BODY, "stream": True},
        headers=headers,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        victim = sims[int(response.headers["x-sage-backend"].split("-")[1])]
        for line in response.iter_lines():
            lines.append(line)
            if sum(1 for seen in lines if seen.startswith("data: {")) == 10:
                victim.proc.send_signal(signal.SIGKILL)
    text, final = _text_of_stream(lines)
    print(f"continued after 10 events; {len(text.split())} words")
    assert text == expected
    assert final.get("sage") == {"continued": 1}
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert (
        'sage_gateway_stream_continuations_total{model="tiny",outcome="completed"} 1.0' in metrics
    )


def test_a_drained_engine_hands_its_streams_to_another_engine(start_gateway) -> None:  # type: ignore[no-untyped-def]
    env = {
        "SAGE_GATEWAY_CONTINUATION_MODELS": "tiny",
        "SAGE_GATEWAY_DRAIN_HANDOFF_S": "0.5",
        "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
        "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
        "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.2",
    }
    gateway = start_gateway(env=env).url
    spec = {"model": "tiny", "runtime": "simulated", "simulator": {"ttft_ms": 5, "itl_ms": 60}}
    ids = []
    for _ in range(2):
        started = httpx.post(
            f"{gateway}/v1/management/engines/start", json={"spec": spec}, timeout=15
        )
        assert started.status_code == 202, started.text
        ids.append(started.json()["id"])

    def routable() -> set[str]:
        table = httpx.get(f"{gateway}/v1/management/backends", timeout=5).json()
        return {b["id"] for b in table["backends"]}

    deadline = time.monotonic() + 30
    while not set(ids) <= routable():
        assert time.monotonic() < deadline, "engines not routable"
        time.sleep(0.1)
    lines: list[str] = []
    with httpx.stream(
        "POST", f"{gateway}/v1/chat/completions", json={**BODY, "stream": True}, timeout=60
    ) as response:
        serving = response.headers["x-sage-backend"]
        for line in response.iter_lines():
            lines.append(line)
            if sum(1 for seen in lines if seen.startswith("data: {")) == 5:
                drained = httpx.post(
                    f"{gateway}/v1/management/engines/stop",
                    json={"engine_id": serving, "drain": True},
                    timeout=15,
                )
                assert drained.status_code == 200, drained.text
    text, final = _text_of_stream(lines)
    assert len(text.split()) == TOKENS
    assert final.get("sage") == {"continued": 1}
    # The drain did not wait for the stream: the engine stopped well before it would have.
    engine = httpx.get(f"{gateway}/v1/management/engines/{serving}", timeout=5).json()
    assert engine["state"] in ("DRAINING", "STOPPED")
