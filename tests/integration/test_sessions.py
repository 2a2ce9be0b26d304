"""Sessions against a real gateway and simulated engines: history, storage of streamed
and cut answers, concurrency, limits, per-key isolation, persistence, affinity."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def _chat(
    url: str, session_id: str, content: str, *, key: str | None = None, **extra: Any
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "session_id": session_id,
        **extra,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def _session(url: str, session_id: str, key: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{url}/sessions/{session_id}", headers=headers, timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def _until_messages(url: str, session_id: str, count: int, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        session = _session(url, session_id)
        if len(session["messages"]) >= count or time.monotonic() > deadline:
            return session
        time.sleep(0.05)


def test_history_is_sent_and_both_sides_are_stored(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny", output_tokens=5)
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    sid = httpx.post(f"{gw.url}/sessions", json={}, timeout=10).json()["id"]

    first = _chat(gw.url, sid, "What is vLLM?")
    assert first.status_code == 200, first.text
    second = _chat(gw.url, sid, "And SGLang?", stream=True, stream_options={"include_usage": True})
    assert second.status_code == 200
    streamed = ""
    for line in second.text.splitlines():
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                streamed += chunk["choices"][0]["delta"].get("content") or ""
            else:
                prompt_tokens = chunk["usage"]["prompt_tokens"]
    # The engine saw the first question and answer too.
    assert prompt_tokens > first.json()["usage"]["prompt_tokens"] + 3

    session = _until_messages(gw.url, sid, 4)
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "What is vLLM?"),
        ("assistant", first.json()["choices"][0]["message"]["content"]),
        ("user", "And SGLang?"),
        ("assistant", streamed),
    ]
    assert session["metadata"]["title"] == "What is vLLM?"
    assert session["messages"][3]["metadata"]["finish_reason"] in {"stop", "length"}
    listed = httpx.get(f"{gw.url}/sessions", timeout=10).json()
    assert listed["sessions"][0]["message_count"] == 4


def test_two_requests_in_one_session_are_both_stored_whole(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny", ttft_ms=300, output_tokens=4)
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    results: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda q=q: results.append(_chat(gw.url, "together", q)))
        for q in ("first question", "second question")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]
    messages = _until_messages(gw.url, "together", 4)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert {messages[0]["content"], messages[2]["content"]} == {"first question", "second question"}
    answers = {r.json()["choices"][0]["message"]["content"] for r in results}
    assert {messages[1]["content"], messages[3]["content"]} == answers


def test_a_stream_cut_by_the_client_stores_what_was_relayed(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny", itl_ms=40, output_tokens=300)
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "a long story"}],
        "session_id": "cut",
        "stream": True,
    }
    received = 0
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received += 1
            if received >= 5:
                break
    session = _until_messages(gw.url, "cut", 2)
    user, reply = session["messages"]
    assert user["content"] == "a long story"
    assert reply["metadata"]["incomplete"] is True
    assert "disconnected" in reply["metadata"]["reason"]
    assert reply["content"]  # what arrived before the cut
    assert len(reply["content"].split()) < 300


def test_size_limits_refuse_clearly(start_simulator, start_gateway, models_ready) -> None:
    sim = start_simulator("tiny")
    gw = start_gateway("--backend", sim.url, env={"SAGE_GATEWAY_SESSION_MAX_MESSAGE_BYTES": "2048"})
    models_ready(gw.url, {"tiny"})
    response = _chat(gw.url, "big", "x" * 5000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "session_message_too_large"
    assert httpx.get(f"{gw.url}/sessions/big", timeout=10).status_code == 404
    bad = _chat(gw.url, "no/slashes", "hi")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "session_id"


def test_keys_never_see_each_others_sessions(start_simulator, start_gateway, models_ready) -> None:
    sim = start_simulator("tiny", output_tokens=3)
    gw = start_gateway("--backend", sim.url, env={"SAGE_API_KEYS": "key-one,key-two"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        models = httpx.get(
            f"{gw.url}/v1/models", headers={"authorization": "Bearer key-one"}
        ).json()
        if models.get("data"):
            break
        time.sleep(0.1)
    first = _chat(gw.url, "shared-name", "secret plans", key="key-one")
    assert first.status_code == 200
    assert (
        httpx.get(
            f"{gw.url}/sessions/shared-name", headers={"authorization": "Bearer key-two"}
        ).status_code
        == 404
    )
    assert (
        httpx.get(f"{gw.url}/sessions", headers={"authorization": "Bearer key-two"}).json()[
            "sessions"
        ]
        == []
    )
    assert httpx.get(f"{gw.url}/sessions").status_code == 401
    # The same id under another key is another conversation: no history leaks into it.
    other = _chat(gw.url, "shared-name", "secret plans", key="key-two")
    assert other.json()["usage"]["prompt_tokens"] == first.json()["usage"]["prompt_tokens"]
    assert len(_session(gw.url, "shared-name", key="key-one")["messages"]) == 2


def test_sessions_survive_a_gateway_restart(start_simulator, start_gateway, models_ready) -> None:
    sim = start_simulator("tiny", output_tokens=3)
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    sid = httpx.post(f"{gw.url}/sessions", json={"title": "keep me"}, timeout=10).json()["id"]
    assert _chat(gw.url, sid, "remember this").status_code == 200
    _until_messages(gw.url, sid, 2)
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(timeout=30)
    again = start_gateway("--backend", sim.url)
    session = _session(again.url, sid)
    assert session["metadata"]["title"] == "keep me"
    assert next(m["content"] for m in session["messages"]) == "remember this"


def test_a_session_stays_on_one_engine(start_simulator, start_gateway, models_ready) -> None:
    # The default policy (cache_aware) keeps a session on its engine: no --policy flag.
    sims = [start_simulator("tiny", output_tokens=2) for _ in range(3)]
    flags = [arg for sim in sims for arg in ("--backend", sim.url)]
    gw = start_gateway(*flags)
    models_ready(gw.url, {"tiny"})
    for name in ("conv-a", "conv-b"):
        backends = {_chat(gw.url, name, f"turn {i}").headers["x-sage-backend"] for i in range(5)}
        assert len(backends) == 1
