"""The engine simulator as a real process on loopback, driven by the openai SDK and httpx."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

MODULE = "sage.unified.agent.simulator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sim:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=10)

    def gauge(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def start_sim(processes: Any, wait_http: Callable[..., httpx.Response]) -> Callable[..., Sim]:
    def start(*flags: str, model: str = "sim-model", wait: bool = True) -> Sim:
        port = _free_port()
        proc = processes.python(
            "-m", MODULE, "--model", model, "--port", str(port), *flags, name="sim"
        )
        sim = Sim(proc, port)
        if wait:
            wait_http(f"{sim.url}/ping", timeout=15)
        return sim

    return start


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_openai_sdk_chat_stream_completions_models(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--output-tokens", "8", "--itl-ms", "20")
    client = sim.client()

    chat = client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hello"}]
    )
    assert chat.object == "chat.completion"
    assert chat.model == "sim-model"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].message.content.split()) == 8  # type: ignore[union-attr]
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 8

    again = client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hello"}]
    )
    assert again.choices[0].message.content == chat.choices[0].message.content  # deterministic

    cut = client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=3,
        n=2,
    )
    assert [c.index for c in cut.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in cut.choices)
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 6

    arrivals: list[float] = []
    deltas: list[str] = []
    stream = client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    finish = None
    for ev in stream:
        arrivals.append(time.monotonic())
        if ev.usage is not None:
            usage = ev.usage
        for choice in ev.choices:
            deltas.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(deltas) == chat.choices[0].message.content
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == 8
    # Incremental: the tokens arrived spread over ~7 ITLs, not in one burst.
    assert arrivals[-1] - arrivals[0] >= 0.1

    comp = client.completions.create(model="sim-model", prompt="once upon", max_tokens=4)
    assert comp.object == "text_completion"
    assert comp.choices[0].finish_reason == "length"
    assert len(comp.choices[0].text.split()) == 4

    models = client.models.list()
    assert [m.id for m in models.data] == ["sim-model"]
    raw = httpx.get(f"{sim.url}/v1/models").json()["data"][0]
    assert raw["owned_by"] == "vllm"
    assert raw["root"] == "sim-model"
    assert "max_model_len" in raw

    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "NotFoundError"  # type: ignore[index]

    # A chat engine registers no embeddings route: vLLM's plain 404.
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="sim-model", input="x")


def test_http_errors_and_plain_endpoints(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim()
    with httpx.Client(base_url=sim.url, timeout=5) as http:
        bad = http.post("/v1/chat/completions", content=b"{nope")
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == 400
        missing = http.post("/v1/chat/completions", json={"model": "sim-model"})
        assert missing.status_code == 400
        assert "messages" in missing.json()["error"]["message"]
        nowhere = http.get("/nowhere")
        assert (nowhere.status_code, nowhere.json()) == (404, {"detail": "Not Found"})
        assert http.get("/v1/chat/completions").status_code == 405
        big = http.post("/v1/completions", content=b"x" * (16 * 1024 * 1024 + 10))
        assert big.status_code == 413
    with httpx.Client(base_url=sim.url, timeout=5) as http:
        echoed = http.post(
            "/v1/completions",
            json={"prompt": "a", "max_tokens": 1},
            headers={"X-Request-Id": "abc-123"},
        )
        assert echoed.headers["x-request-id"] == "abc-123"
        assert http.post("/v1/completions", json={"prompt": "a"}).headers["x-request-id"]
        assert http.get("/health").status_code == 200
        assert http.get("/health").content == b""
        assert http.get("/ping").status_code == 200
        assert "version" in http.get("/version").json()
        assert http.get("/load").json() == {"server_load": 0}
        assert http.get("/sim/stats").status_code == 404  # control is opt-in
        metrics = http.get("/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
    ):
        assert f'{name}{{engine="0",model_name="sim-model"' in metrics
    success = (
        'vllm:request_success_total{engine="0",model_name="sim-model",finished_reason="%s"} 1.0'
    )
    assert success % "stop" in metrics
    assert success % "length" in metrics


def test_embeddings(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--kind", "embedding", "--embedding-dim", "32", model="emb")
    client = sim.client()
    res = client.embeddings.create(model="emb", input=["alpha", "beta", "alpha"])
    vecs = [d.embedding for d in res.data]
    assert [d.index for d in res.data] == [0, 1, 2]
    assert len(vecs[0]) == 32
    assert vecs[0] == vecs[2]
    assert vecs[0] != vecs[1]
    assert abs(sum(v * v for v in vecs[0]) - 1.0) < 1e-6
    # The SDK asks for base64 by default when numpy is absent or present alike; check float too.
    raw = httpx.post(
        f"{sim.url}/v1/embeddings", json={"input": "alpha", "encoding_format": "float"}
    ).json()
    assert raw["data"][0]["embedding"] == pytest.approx(vecs[0], abs=1e-6)
    assert raw["usage"]["prompt_tokens"] >= 1
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="emb", messages=[{"role": "user", "content": "x"}])
    assert httpx.post(f"{sim.url}/v1/completions", json={"prompt": "x"}).json() == {
        "detail": "Not Found"
    }


def test_running_and_waiting_under_load_and_disconnect_frees_slot(
    start_sim: Callable[..., Sim],
) -> None:
    sim = start_sim(
        "--max-num-seqs", "1", "--ttft-ms", "50", "--itl-ms", "100", "--output-tokens", "30"
    )
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    got_first = threading.Event()
    release = threading.Event()

    def second_stream() -> None:
        with (
            httpx.Client(base_url=sim.url, timeout=10) as c2,
            c2.stream("POST", "/v1/chat/completions", json=body) as r,
        ):
            lines = r.iter_lines()  # keep a reference: a collected iterator closes the response
            next(lines)
            got_first.set()
            release.wait(10)
        # Leaving the blocks disconnects mid-stream.

    waiter = threading.Thread(target=second_stream, daemon=True)
    with (
        httpx.Client(base_url=sim.url, timeout=10) as c1,
        c1.stream("POST", "/v1/chat/completions", json=body) as first,
    ):
        assert first.status_code == 200
        first_lines = first.iter_lines()
        assert next(first_lines).startswith("data: ")
        # A second request queues behind the first (max-num-seqs 1).
        waiter.start()
        _wait_until(lambda: sim.gauge("vllm:num_requests_waiting") == 1.0)
        assert sim.gauge("vllm:num_requests_running") == 1.0
        assert sim.gauge("vllm:kv_cache_usage_perc") > 0.0  # the running stream's blocks
        assert httpx.get(f"{sim.url}/load").json() == {"server_load": 2}
    # Leaving the block closes the first stream mid-way: its slot goes to the waiter at once.
    assert got_first.wait(5)
    assert sim.gauge("vllm:num_requests_waiting") == 0.0
    assert sim.gauge("vllm:num_requests_running") == 1.0
    release.set()
    waiter.join(timeout=5)
    _wait_until(lambda: sim.gauge("vllm:num_requests_running") == 0.0)
    metrics = httpx.get(f"{sim.url}/metrics").text
    assert 'finished_reason="abort"} 2.0' in metrics


def test_startup_delay_keeps_port_closed(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--startup-delay-s", "1.0", wait=False)
    time.sleep(0.4)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sim.url}/health", timeout=1)
    _wait_until(lambda: _status(f"{sim.url}/health") == 200, timeout=10)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return -1


def test_sigterm_lets_inflight_finish(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--shutdown-timeout", "5", "--ttft-ms", "1500", "--output-tokens", "2")
    result: dict[str, Any] = {}

    def call() -> None:
        with httpx.Client(timeout=10) as http:
            result["r"] = http.post(
                f"{sim.url}/v1/completions",
                json={"prompt": "x"},
                headers={"connection": "keep-alive"},
            )

    with httpx.Client(timeout=5) as idle:
        assert idle.get(f"{sim.url}/ping").status_code == 200  # an open keep-alive connection
        t = threading.Thread(target=call)
        t.start()
        _wait_until(lambda: sim.gauge("vllm:num_requests_running") == 1.0)
        sim.proc.send_signal(signal.SIGTERM)
        # The listener closes; an already-open keep-alive connection gets 503.
        _wait_until(lambda: _status(f"{sim.url}/ping") == -1)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{sim.url}/ping", timeout=1)
        assert idle.post(f"{sim.url}/v1/completions", json={"prompt": "y"}).status_code == 503
        t.join(timeout=10)
    assert result["r"].status_code == 200
    assert result["r"].json()["choices"][0]["finish_reason"] == "stop"
    assert sim.proc.wait(timeout=10) == 0


def test_sigterm_without_timeout_aborts_streams(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--ttft-ms", "10", "--itl-ms", "200", "--output-tokens", "50")
    body = {"model": "sim-model", "prompt": "x", "stream": True}
    with (
        httpx.Client(base_url=sim.url, timeout=10) as http,
        http.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: {")
        sim.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest
    assert '"error"' in rest[-1]
    assert "data: [DONE]" not in rest
    assert sim.proc.wait(timeout=10) == 0


def test_failure_injection_and_unhealthy(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--failure-rate", "1.0", "--unhealthy")
    client = sim.client()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}]
        )
    assert httpx.get(f"{sim.url}/health").status_code == 503
    # Engine dead, API alive: the port answers everything else.
    assert httpx.get(f"{sim.url}/v1/models").status_code == 200


def test_control_endpoint_and_crash(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--enable-control")
    with httpx.Client(base_url=sim.url, timeout=5) as http:
        assert http.post("/sim/config", json={"healthy": False}).json()["healthy"] is False
        assert http.get("/health").status_code == 503
        assert (
            http.post("/sim/config", json={"healthy": True, "output_tokens": 2}).status_code == 200
        )
        assert http.get("/health").status_code == 200
        r = http.post("/v1/completions", json={"prompt": "x"})
        assert len(r.json()["choices"][0]["text"].split()) == 2
        assert http.post("/sim/config", json={"failure_rate": 2}).status_code == 400
        stats = http.get("/sim/stats").json()
        assert stats["inference_requests"] == 1
        assert stats["running"] == 0
        with pytest.raises(httpx.HTTPError):
            http.post("/sim/crash")
    assert sim.proc.wait(timeout=10) == 1


def test_crash_after(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--crash-after", "1")
    with httpx.Client(base_url=sim.url, timeout=5) as http:
        assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 200
        with pytest.raises(httpx.HTTPError):
            http.post("/v1/completions", json={"prompt": "x"})
    assert sim.proc.wait(timeout=10) == 1


def test_keep_alive_idle_close(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("--keep-alive-timeout", "0.3")
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # the server closed the idle connection
        assert 0.2 < time.monotonic() - started < 3.0


def test_spawn_child_dies_with_simulator_and_ignore_sigterm(start_sim: Callable[..., Sim]) -> None:
    import psutil

    sim = start_sim("--spawn-child")
    children = psutil.Process(sim.proc.pid).children()
    assert len(children) == 1
    child = children[0]
    assert os.getpgid(child.pid) == os.getpgid(sim.proc.pid)  # same process group, like EngineCore
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(timeout=10) == 0
    child.wait(timeout=5)
    assert not child.is_running()

    stubborn = start_sim("--ignore-sigterm")
    stubborn.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert stubborn.proc.poll() is None
    assert httpx.get(f"{stubborn.url}/ping").status_code == 200
