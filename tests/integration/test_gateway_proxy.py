"""The gateway's data plane against real simulated engines (static backends, real HTTP).

Static mode (``--backend URL``) keeps the control plane out of these tests, so each one
checks what the proxy itself promises: OpenAI compatibility, errors, retries before the
first byte, honest mid-stream failures, aborting upstream work when a client leaves,
header hygiene and session affinity.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import psutil
import pytest

pytestmark = pytest.mark.slow

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _metric(url: str, name: str) -> float:
    total = 0.0
    found = False
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise AssertionError(f"metric {name} not found at {url}")
    return total


def test_openai_sdk_chat_stream_completions_embeddings_models(
    start_simulator, start_gateway, models_ready
) -> None:
    llm = start_simulator("tiny", output_tokens=6)
    emb = start_simulator("emb", kind="embedding")
    gw = start_gateway("--backend", llm.url, "--backend", emb.url)
    models_ready(gw.url, {"tiny", "emb"})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)

    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 3

    deltas = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if chunk.choices
    ]
    assert len([d for d in deltas if d]) == 6

    completion = client.completions.create(model="tiny", prompt="Once upon", max_tokens=2)
    assert completion.choices[0].text

    vectors = client.embeddings.create(model="emb", input=["a", "b"])
    assert [len(v.embedding) for v in vectors.data] == [384, 384]

    assert {m.id for m in client.models.list()} == {"tiny", "emb"}


def test_openai_errors_keep_their_sdk_classes(start_simulator, start_gateway, models_ready) -> None:
    llm = start_simulator("tiny")
    gw = start_gateway("--backend", llm.url, env={"SAGE_API_KEYS": "k-right"})
    headers = {"authorization": "Bearer k-right"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if httpx.get(f"{gw.url}/v1/models", headers=headers).json()["data"]:
            break
        time.sleep(0.1)
    good = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="k-right", max_retries=0)
    bad = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="k-wrong", max_retries=0)

    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as info:
        good.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "tiny" in str(info.value)  # the error lists what is served
    # An upstream 4xx passes through unchanged (the simulator's own 400 for a bad field).
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(model="tiny", messages="not a list")  # type: ignore[arg-type]


def test_bad_input_gets_openai_shaped_errors(start_simulator, start_gateway, models_ready) -> None:
    llm = start_simulator("tiny")
    gw = start_gateway("--backend", llm.url, env={"SAGE_GATEWAY_MAX_BODY_BYTES": "4096"})
    models_ready(gw.url, {"tiny"})
    url = f"{gw.url}/v1/chat/completions"

    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (json.dumps({"messages": []}).encode(), 400, "invalid_request"),
        (json.dumps({"model": 7}).encode(), 400, "invalid_request"),
        (json.dumps({**CHAT, "padding": "x" * 5000}).encode(), 413, "request_too_large"),
        # ~1,000 levels used to exhaust the body peek's recursion: a 500 and a traceback.
        (b'{"model": "tiny", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}", 400, "invalid_request"),
        (b"[" * 2000 + b"]" * 2000, 400, "invalid_request"),
    ]
    for body, status, code in cases:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, (body[:40], response.text)
        assert response.json()["error"]["code"] == code
    assert httpx.get(url).status_code == 405
    assert httpx.get(f"{gw.url}/v1/not-forwarded").status_code == 404
    # Nothing but the allow-listed OpenAI paths reaches an engine.
    assert httpx.get(f"{gw.url}/metrics").text.startswith("#")
    assert "vllm:" not in httpx.get(f"{gw.url}/metrics").text


def test_connection_refused_is_retried_once_on_another_backend(
    start_simulator, start_gateway, models_ready
) -> None:
    first = start_simulator("tiny")
    second = start_simulator("tiny")
    gw = start_gateway("--backend", first.url, "--backend", second.url, "--policy", "round_robin")
    models_ready(gw.url, {"tiny"})
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()

    served_by = set()
    for _ in range(6):
        response = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=10)
        assert response.status_code == 200, response.text
        served_by.add(response.headers["x-sage-backend"])
    assert served_by == {"static-1-llm"}
    assert _metric(gw.url, "sage_gateway_retries_total") >= 1
    assert _metric(gw.url, "sage_gateway_in_flight") == 0  # the scrape itself is not proxied
    assert _metric(gw.url, "sage_gateway_requests_total") >= 6


def test_killing_a_backend_under_load_fails_no_request(
    start_simulator, start_gateway, models_ready
) -> None:
    sims = [start_simulator("tiny", ttft_ms=20, itl_ms=5, output_tokens=4) for _ in range(2)]
    gw = start_gateway("--backend", sims[0].url, "--backend", sims[1].url)
    models_ready(gw.url, {"tiny"})

    statuses: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=15) as client:
            while not stop.is_set():
                try:
                    statuses.append(
                        client.post(f"{gw.url}/v1/chat/completions", json=CHAT).status_code
                    )
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    os.kill(sims[0].proc.pid, signal.SIGKILL)
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors
    assert len(statuses) > 50
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_a_stream_cut_mid_way_ends_with_an_error_event_and_no_done(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny", itl_ms=100, output_tokens=50)
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    events: list[str] = []
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 50, "stream": True},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        killed_at = None
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 3:
                os.kill(sim.proc.pid, signal.SIGKILL)
                killed_at = time.monotonic()
    assert killed_at is not None
    assert time.monotonic() - killed_at < 1.0  # in-band error within a second
    assert events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_interrupted"
    assert "[DONE]" not in events


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_client_disconnect_aborts_the_upstream_request(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny", itl_ms=100, output_tokens=200)
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 200, "stream": True},
        timeout=10,
    ) as response:
        # Keep the iterator referenced: leaving a for loop over it would close the response.
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert _metric(sim.url, "vllm:num_requests_running") == 1
    left_at = time.monotonic()
    while _metric(sim.url, "vllm:num_requests_running") != 0:
        assert time.monotonic() - left_at < 1.0, (
            "upstream request still running 1 s after the client left"
        )
        time.sleep(0.05)
    # No task or socket is left behind: after more clients leave mid-stream, the
    # gateway holds no more file descriptors than before (pooled keep-alive aside).
    baseline = _open_fds(gw.proc.pid)
    for _ in range(5):
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={**CHAT, "max_tokens": 200, "stream": True},
            timeout=10,
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 3
    while _open_fds(gw.proc.pid) > baseline + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _open_fds(gw.proc.pid) <= baseline + 1
    # The last client left a moment ago: its abort reaches the engine within the same
    # second as the first one did.
    left_at = time.monotonic()
    while _metric(sim.url, "vllm:num_requests_running") != 0:
        assert time.monotonic() - left_at < 1.0, "an upstream request outlived its client"
        time.sleep(0.05)


def test_a_client_that_stops_reading_a_stream_holds_back_the_engine_not_gateway_memory(
    start_simulator, start_gateway, models_ready
) -> None:
    # ~45 MB of SSE as fast as the engine can produce it, to a client that reads only the
    # response head: the gateway must stop reading from the engine rather than buffer it
    # (the simulator itself buffers what it cannot send, so its state proves nothing).
    tokens = 200_000
    # A context (and a KV cache) long enough for the whole answer, as vLLM would need.
    sim = start_simulator(
        "tiny", itl_ms=0, output_tokens=tokens, max_model_len=tokens + 64, kv_blocks=12_600
    )
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    gateway = psutil.Process(gw.proc.pid)
    rss_before = gateway.memory_info().rss
    body = json.dumps({**CHAT, "max_tokens": tokens, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
            b"content-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert client.recv(256).startswith(b"HTTP/1.1 200")
        time.sleep(3)  # the engine could have sent everything by now, several times over
        rss_grown = gateway.memory_info().rss - rss_before
        assert rss_grown < 16 * 2**20, f"gateway grew {rss_grown / 2**20:.0f} MiB"
        received = 0
        client.settimeout(30)
        while chunk := client.recv(1 << 20):  # reading resumes the stream to its end
            received += len(chunk)
            if chunk.endswith(b"0\r\n\r\n"):
                break
    assert received > 30 * 2**20


def test_idle_client_connections_close_after_the_configured_keep_alive(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny")
    gw = start_gateway("--backend", sim.url, env={"SAGE_GATEWAY_KEEP_ALIVE_S": "1"})
    models_ready(gw.url, {"tiny"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        # This idle connection and the scrape's own.
        assert _metric(gw.url, "sage_gateway_client_connections") >= 2
        assert client.recv(1) == b""  # closed by the gateway
        idle = time.monotonic() - answered
    assert 0.9 <= idle <= 2.5, idle  # 1 s, checked by a 0.5 s sweep
    assert _metric(gw.url, "sage_gateway_client_connections") == 1  # the scrape's


def test_session_affinity_keeps_a_session_on_one_backend(
    start_simulator, start_gateway, models_ready
) -> None:
    sims = [start_simulator("tiny") for _ in range(3)]
    gw = start_gateway(*[arg for s in sims for arg in ("--backend", s.url)], "--policy", "session")
    models_ready(gw.url, {"tiny"})
    with httpx.Client(timeout=10) as client:
        for session in ("alice", "bob", "carol"):
            chosen = {
                client.post(
                    f"{gw.url}/v1/chat/completions", json=CHAT, headers={"x-session-id": session}
                ).headers["x-sage-backend"]
                for _ in range(8)
            }
            assert len(chosen) == 1, (session, chosen)
        # The body's `user` field is the session key when there is no header.
        by_user = {
            client.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "user": "dave"}).headers[
                "x-sage-backend"
            ]
            for _ in range(8)
        }
        assert len(by_user) == 1
        spread = {
            client.post(
                f"{gw.url}/v1/chat/completions", json=CHAT, headers={"x-session-id": f"s{i}"}
            ).headers["x-sage-backend"]
            for i in range(30)
        }
        assert len(spread) >= 2


def test_headers_are_sanitised_both_ways(start_gateway, models_ready) -> None:
    seen: dict[str, Any] = {}
    server = _HeaderEcho(seen)
    server.start()
    try:
        gw = start_gateway(
            "--backend", server.url, env={"SAGE_GATEWAY_ENGINE_API_KEY": "engine-secret"}
        )
        models_ready(gw.url, {"echo"})
        response = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "echo", "messages": []},
            headers={
                "authorization": "Bearer client-key-SENTINEL",
                "connection": "x-foo",
                "x-foo": "hop",
                "x-forwarded-for": "6.6.6.6",
                "x-request-id": "req-123",
                "x-custom": "kept",
            },
        )
        assert response.status_code == 200
        upstream = seen["headers"]
        assert upstream["authorization"] == "Bearer engine-secret"
        assert "x-foo" not in upstream
        assert upstream["x-forwarded-for"] == "127.0.0.1"
        assert upstream["x-request-id"] == "req-123"
        assert upstream["x-custom"] == "kept"
        assert response.headers["x-request-id"] == "req-123"
        assert (
            "x-upstream-secret" not in response.headers
        )  # named by the engine's Connection header
        assert response.headers.get("server") is None
    finally:
        server.stop()


class _HeaderEcho:
    """A tiny upstream that records request headers (and names one in Connection)."""

    def __init__(self, seen: dict[str, Any]) -> None:
        outer = seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("connection", "x-upstream-secret")
                self.send_header("x-upstream-secret", "1")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer({"object": "list", "data": [{"id": "echo", "object": "model"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer["headers"] = {k.lower(): v for k, v in self.headers.items()}
                self._answer({"ok": True})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def test_no_prompt_completion_or_key_reaches_the_logs(
    start_simulator, start_gateway, processes
) -> None:
    sentinel = "SENTINEL-7f3a"
    sim = start_simulator("tiny")
    gw = start_gateway(
        "--backend",
        sim.url,
        "--log-level",
        "debug",
        env={"SAGE_API_KEYS": f"key-{sentinel}", "SAGE_GATEWAY_ACCESS_LOG": "true"},
    )
    key = {"authorization": f"Bearer key-{sentinel}"}
    deadline = time.monotonic() + 15
    while not httpx.get(f"{gw.url}/v1/models", headers=key).json()["data"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    prompt = {"model": "tiny", "messages": [{"role": "user", "content": f"secret {sentinel}"}]}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=prompt, headers=key).status_code == 200
    stream = httpx.post(
        f"{gw.url}/v1/chat/completions", json={**prompt, "stream": True}, headers=key
    )
    assert stream.status_code == 200
    wrong = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=prompt,
        headers={"authorization": f"Bearer {sentinel}"},
    )
    assert wrong.status_code == 401
    assert sentinel not in wrong.text
    bad = httpx.post(
        f"{gw.url}/v1/chat/completions", content=f'{{"model": "{sentinel}", "x": ', headers=key
    )
    assert bad.status_code == 400
    assert sentinel not in bad.text
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert sentinel not in metrics
    time.sleep(0.2)
    log = processes.log_of(gw.proc)
    assert "POST /v1/chat/completions" in log  # the access log is on, and it is clean
    assert sentinel not in log


def test_all_backends_unreachable_is_a_fast_503_with_retry_after(
    start_simulator, start_gateway, models_ready
) -> None:
    sims = [start_simulator("tiny") for _ in range(2)]
    gw = start_gateway("--backend", sims[0].url, "--backend", sims[1].url)
    models_ready(gw.url, {"tiny"})
    for sim in sims:
        os.kill(sim.proc.pid, signal.SIGKILL)
        sim.proc.wait()
    for _ in range(3):
        started = time.monotonic()
        response = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=10)
        assert time.monotonic() - started < 1.0
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "no_backend_available"
        assert int(response.headers["retry-after"]) >= 1


def test_a_client_leaving_a_non_streamed_request_aborts_it_upstream(
    start_simulator, start_gateway, models_ready
) -> None:
    sim = start_simulator("tiny", ttft_ms=5000)
    gw = start_gateway("--backend", sim.url)
    models_ready(gw.url, {"tiny"})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=httpx.Timeout(10, read=0.7))
    left_at = time.monotonic()
    while _metric(sim.url, "vllm:num_requests_running") != 0:
        assert time.monotonic() - left_at < 1.0, "the engine still generates for a client that left"
        time.sleep(0.05)
    # The engine was not blamed for the abort: not ejected, nothing retried.
    assert _metric(gw.url, "sage_gateway_backend_ejected") == 0
    assert "sage_gateway_retries_total{" not in httpx.get(f"{gw.url}/metrics").text


def test_vllm_endpoints_beyond_chat_are_routed_by_model(
    start_simulator, start_gateway, models_ready
) -> None:
    whisper = start_simulator("whisper", kind="transcription")
    reranker = start_simulator("rr", kind="rerank")
    gw = start_gateway("--backend", whisper.url, "--backend", reranker.url)
    models_ready(gw.url, {"whisper", "rr"})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0\0" * 8000 * 2)
    heard = client.audio.transcriptions.create(model="whisper", file=("a.wav", buffer.getvalue()))
    assert len(heard.text.split()) == 4  # the simulator hears two words a second

    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        ranked = httpx.post(
            f"{gw.url}{path}", json={"model": "rr", "query": "red", "documents": ["blue", "red"]}
        )
        assert ranked.status_code == 200, ranked.text
        assert ranked.json()["results"][0]["index"] == 1
    tokens = httpx.post(f"{gw.url}/tokenize", json={"model": "whisper", "prompt": "a b"})
    assert tokens.status_code == 200
    assert tokens.json()["tokens"]
    classified = httpx.post(f"{gw.url}/classify", json={"model": "rr", "input": ["a"]})
    assert classified.status_code == 200

    card = client.models.retrieve("rr")
    assert card.id == "rr"
    missing = httpx.get(f"{gw.url}/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert "rr" in missing.json()["error"]["message"]


def test_every_vllm_route_reaches_the_engine_of_its_model_and_cards_name_kinds(
    start_simulator, start_gateway, models_ready
) -> None:
    chat = start_simulator("tiny", output_tokens=3)
    embedder = start_simulator("emb", kind="embedding", embedding_dim=8)
    # Embedded mode: the control plane knows each engine's kind from its registration.
    gw = start_gateway(env={"SAGE_COORDINATOR_PROBE_INTERVAL_S": "0.5"})
    for engine_id, model, kind, sim in (
        ("chat-1", "tiny", "llm", chat),
        ("emb-1", "emb", "embedding", embedder),
    ):
        registered = httpx.post(
            f"{gw.url}/v1/management/engines/register",
            json={"model": model, "url": sim.url, "kind": kind, "id": engine_id},
            timeout=10,
        )
        assert registered.status_code == 201, registered.text
    models_ready(gw.url, {"tiny", "emb"})

    cards = {card["id"]: card for card in httpx.get(f"{gw.url}/v1/models").json()["data"]}
    assert (cards["tiny"]["kinds"], cards["emb"]["kinds"]) == (["llm"], ["embedding"])
    assert httpx.get(f"{gw.url}/v1/models/emb").json()["kinds"] == ["embedding"]

    def served_by(path: str, body: dict[str, Any]) -> tuple[str, Any]:
        response = httpx.post(f"{gw.url}{path}", json=body, timeout=10)
        assert response.status_code == 200, (path, response.text)
        return response.headers["x-sage-backend"], response.json()

    engine, answer = served_by("/v1/responses", {"model": "tiny", "input": "hi"})
    assert (engine, answer["object"], answer["status"]) == ("chat-1", "response", "completed")
    for path in ("/score", "/v1/score"):
        engine, scored = served_by(path, {"model": "emb", "text_1": "cat", "text_2": ["cat", "x"]})
        assert engine == "emb-1"
        assert scored["data"][0]["score"] == pytest.approx(1.0)  # cosine of equal vectors
    engine, pooled = served_by("/pooling", {"model": "emb", "input": ["cat"]})
    assert (engine, pooled["data"][0]["object"]) == ("emb-1", "pooling")
    # vLLM serves its tokenizer routes for every model, pooling ones included.
    for model, expected in (("tiny", "chat-1"), ("emb", "emb-1")):
        engine, tokens = served_by("/tokenize", {"model": model, "prompt": "a b"})
        assert (engine, tokens["count"]) == (expected, 2)
        engine, text = served_by("/detokenize", {"model": model, "tokens": tokens["tokens"]})
        assert (engine, text["prompt"]) == (expected, "a b")

    # The other kind's routes are refused at once, naming what serves them.
    for path, model, serving in (("/v1/responses", "emb", "tiny"), ("/pooling", "tiny", "emb")):
        refused = httpx.post(f"{gw.url}{path}", json={"model": model, "input": "x"}, timeout=10)
        assert refused.status_code == 400, (path, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "model_wrong_kind"
        assert f"models serving it: {serving}" in error["message"]
