"""The SDK client against real simulator processes and a fake control plane.

Gateway mode: two simulators stand in for two gateways (they serve the same
OpenAI API); stopping the first must not fail calls. Direct mode: a small
threaded HTTP server plays the control plane's ``/v1/management/backends`` with
long-poll semantics, so a backend added later is seen within a second.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from sage.unified.sdk.client import (
    AsyncUnifiedInferenceClient,
    NoBackendAvailableError,
    NotFoundError,
    StreamInterruptedError,
    UnifiedInferenceClient,
    set_testing,
)

MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture
def start_sim(
    processes: Any, free_tcp_port_factory: Callable[[], int], wait_http: Callable[..., Any]
) -> Callable[..., tuple[str, Any]]:
    def start(model: str = "m", *extra: str) -> tuple[str, Any]:
        port = free_tcp_port_factory()
        proc = processes.python(
            "-m",
            "sage.unified.agent.simulator",
            "--model",
            model,
            "--port",
            str(port),
            *extra,
            name="sim",
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout=30)
        return url, proc

    return start


class FakeControlPlane:
    """``GET /v1/management/backends[?after=&wait=]`` served from a thread."""

    def __init__(self) -> None:
        self.revision = 1
        self.backends: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.requests = 0
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/v1/management/backends":
                    self.send_error(404)
                    return
                query = parse_qs(parts.query)
                after = int(query["after"][0]) if "after" in query else None
                wait = float(query.get("wait", ["0"])[0])
                with plane.cond:
                    plane.requests += 1
                    if after is not None and wait > 0:
                        plane.cond.wait_for(lambda: plane.revision != after, timeout=wait)
                    body = json.dumps(
                        {"revision": plane.revision, "backends": plane.backends}
                    ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, *rows: tuple[str, str, str]) -> None:
        with self.cond:
            self.backends = [
                {"id": f"e{i}", "model": model, "kind": kind, "url": url}
                for i, (url, model, kind) in enumerate(rows)
            ]
            self.revision += 1
            self.cond.notify_all()


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    plane = FakeControlPlane()
    plane.thread.start()
    try:
        yield plane
    finally:
        plane.server.shutdown()
        plane.server.server_close()
        plane.thread.join(timeout=5)


@pytest.fixture
def no_waits() -> Iterator[None]:
    previous = set_testing(True)
    yield
    set_testing(previous)


# -------------------------------------------------------------------- gateway mode
def test_gateway_failover_when_the_first_stops(start_sim: Callable[..., tuple[str, Any]]) -> None:
    first, first_proc = start_sim("m")
    second, _ = start_sim("m")
    with UnifiedInferenceClient([first, second], refresh_interval_s=0, timeout=20) as client:
        assert client.models() == ["m"]
        result = client.chat(MSGS, max_tokens=4, temperature=0)  # the single model is chosen
        assert result.model == "m"
        assert result.text
        assert result.usage is not None
        first_proc.send_signal(signal.SIGKILL)
        first_proc.wait(timeout=10)
        for _ in range(3):
            assert client.chat(MSGS, model="m", max_tokens=2).text
        completion = client.generate("once upon", model="m", max_tokens=3)
        assert completion.finish_reason == "length"
        with client.chat(MSGS, model="m", stream=True, max_tokens=5) as stream:
            pieces = list(stream)
        assert "".join(pieces) == stream.text
        assert stream.usage is not None
        assert stream.usage.completion_tokens == 5
        with pytest.raises(NotFoundError, match="does not exist"):
            client.chat(MSGS, model="not-served")


def test_all_gateways_down_is_a_helpful_error(
    free_tcp_port_factory: Callable[[], int], no_waits: None
) -> None:
    urls = [f"http://127.0.0.1:{free_tcp_port_factory()}" for _ in range(2)]
    client = UnifiedInferenceClient(urls, refresh_interval_s=0)
    with client, pytest.raises(NoBackendAvailableError) as info:
        client.chat(MSGS, model="m")
    message = str(info.value)
    assert urls[0] in message
    assert urls[1] in message
    assert "sage gateway start" in message


def test_embeddings(start_sim: Callable[..., tuple[str, Any]]) -> None:
    url, _ = start_sim("emb", "--kind", "embedding", "--embedding-dim", "8")
    with UnifiedInferenceClient(url, refresh_interval_s=0) as client:
        result = client.embed(["a", "b"])
    assert len(result.vectors) == 2
    assert all(len(v) == 8 for v in result.vectors)


def test_stream_cut_by_a_dying_server(start_sim: Callable[..., tuple[str, Any]]) -> None:
    url, proc = start_sim("m", "--itl-ms", "100", "--output-tokens", "200")
    with UnifiedInferenceClient(url, refresh_interval_s=0, timeout=20) as client:
        stream = client.chat(MSGS, model="m", stream=True)
        received = [next(iter(stream)), next(iter(stream))]
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(StreamInterruptedError) as info:
            received.extend(stream)
    assert info.value.partial_text.startswith("".join(received[:2]))
    assert info.value.partial_text


def test_stream_aborted_by_a_stopping_server_reports_its_error(
    start_sim: Callable[..., tuple[str, Any]],
) -> None:
    url, proc = start_sim("m", "--itl-ms", "100", "--output-tokens", "200")
    with UnifiedInferenceClient(url, refresh_interval_s=0, timeout=20) as client:
        stream = client.chat(MSGS, model="m", stream=True)
        first = next(iter(stream))
        proc.send_signal(signal.SIGTERM)  # aborts in-flight streams with an error event
        with pytest.raises(StreamInterruptedError) as info:
            list(stream)
    assert info.value.partial_text.startswith(first)
    assert "server error" in str(info.value)  # the in-band event, not a bare cut
    assert info.value.error_type is not None


@pytest.mark.anyio
async def test_async_gateway_failover_and_streams(
    start_sim: Callable[..., tuple[str, Any]],
) -> None:
    first, first_proc = start_sim("m", "--itl-ms", "20", "--output-tokens", "50")
    second, _ = start_sim("m", "--itl-ms", "20", "--output-tokens", "50")
    async with AsyncUnifiedInferenceClient(
        [first, second], refresh_interval_s=0, timeout=20
    ) as client:
        assert (await client.chat(MSGS, model="m", max_tokens=3)).text
        # Leaving a stream early closes it cleanly (no warnings under trio either).
        async with await client.chat(MSGS, model="m", stream=True) as stream:
            async for _ in stream:
                break
        first_proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(first_proc.wait)
        async with await client.generate("x", model="m", stream=True, max_tokens=4) as stream:
            pieces = [piece async for piece in stream]
        assert len(pieces) == 4
        assert stream.finish_reason == "length"


# --------------------------------------------------------------------- direct mode
def test_direct_mode_sees_a_new_backend_within_a_second(
    start_sim: Callable[..., tuple[str, Any]], control_plane: FakeControlPlane
) -> None:
    first, _ = start_sim("m")
    second, _ = start_sim("n")
    control_plane.publish((first, "m", "llm"))
    with UnifiedInferenceClient(
        control_plane_url=control_plane.url, refresh_interval_s=30
    ) as client:
        assert client.chat(MSGS, max_tokens=2).model == "m"
        deadline = time.monotonic() + 5
        while client._core.cache.revision != control_plane.revision and time.monotonic() < deadline:
            time.sleep(0.01)
        requests_before = control_plane.requests
        control_plane.publish((first, "m", "llm"), (second, "n", "llm"))
        published = time.monotonic()
        while (
            client._core.cache.revision != control_plane.revision
            and time.monotonic() < published + 5
        ):
            time.sleep(0.01)
        assert time.monotonic() - published < 1.0
        assert client.models() == ["m", "n"]
        assert client.chat(MSGS, model="n", max_tokens=2).model == "n"
        # One long-poll answered the change: the watch does not poll in a loop.
        assert control_plane.requests - requests_before <= 2


@pytest.mark.anyio
async def test_async_direct_mode_watch(
    start_sim: Callable[..., tuple[str, Any]], control_plane: FakeControlPlane
) -> None:
    url, _ = start_sim("m")
    async with AsyncUnifiedInferenceClient(
        control_plane_url=control_plane.url, refresh_interval_s=30
    ) as client:
        with pytest.raises(NoBackendAvailableError, match="sage llm engine start"):
            await client.chat(MSGS)
        control_plane.publish((url, "m", "llm"))
        with anyio.fail_after(1.0):
            while client._core.cache.revision != control_plane.revision:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert (await client.chat(MSGS, max_tokens=2)).model == "m"


def test_direct_mode_without_backends(control_plane: FakeControlPlane) -> None:
    with (
        UnifiedInferenceClient(control_plane_url=control_plane.url, refresh_interval_s=0) as client,
        pytest.raises(NoBackendAvailableError) as info,
    ):
        client.embed("x")
    assert "no embedding model is served" in str(info.value)
    assert "sage llm engine start" in str(info.value)
