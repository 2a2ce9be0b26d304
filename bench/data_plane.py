"""The data plane's own CPU per proxied request, in one process, without sockets.

The gateway's app is built as ``sage gateway run --backend ...`` builds it (default
settings: ``cache_aware``, the ledger, stall detection, sessions), its lifespan entered,
and its upstream client swapped for one that answers at once (after one trip through the
event loop, as a real engine's answer would come). Requests then go through the same
ASGI callable the gateway's HTTP server calls (``gateway.app.fast_path``), one after
another, with the headers a real client sends. What is timed is everything between the
server handing over a request and the last ``send``: keys, limits, the body peek,
routing, the ledger, retries' bookkeeping, headers, the relay.

This is the part of ``bench/gateway_overhead.sh``'s "gateway CPU per request" that is our
Python, without the HTTP server, the upstream client and the kernel, and with none of
the noise of processes sharing two cores, so changes of a microsecond show.

Prints microseconds per request (best of several repeats) for:

- a non-streamed chat with one backend (no routing choice) and with two (``cache_aware``
  weighs the prompt),
- a streamed chat (16 chunks) with one backend.

Run: ``.venv/bin/python bench/data_plane.py``
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from sage.unified.gateway.app import create_gateway_app, fast_path
from sage.unified.gateway.routing import RoutingState
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable

REPEATS = 7
REQUESTS = 4_000
CHAT = {
    "model": "m",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 32,
}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
).encode()
CHUNKS = [b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n' for _ in range(16)] + [
    b"data: [DONE]\n\n"
]


class Reply:
    """An engine's answer: its head at once, its body chunk by chunk."""

    __slots__ = ("_chunks", "headers", "status")

    def __init__(self, chunks: list[bytes], content_type: bytes) -> None:
        self.status = 200
        self.headers = [(b"content-type", content_type), (b"server", b"mock")]
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    def close(self) -> None:
        pass


class FixedTable:
    """A table source with the benchmark's engines, there from the start."""

    def __init__(self, backends: int) -> None:
        self.urls = [f"http://127.0.0.1:{18001 + i}" for i in range(backends)]
        self.status: dict[str, Any] = {"reachable": True, "last_update": None, "mode": "static"}
        self.applied = asyncio.Event()

    def unavailable_models(self) -> frozenset[str]:
        return frozenset()

    def settling(self) -> bool:
        return False

    async def run(self, state: RoutingState) -> None:
        backends = [
            Backend(id=f"e{i}", model="m", kind=EngineKind.LLM, url=url)
            for i, url in enumerate(self.urls)
        ]
        state.update(RoutingTable(revision=1, backends=backends))
        self.status["last_update"] = time.time()
        self.applied.set()
        await asyncio.Event().wait()


class InstantUpstream:
    """Answers every request after one trip through the event loop."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    async def request(
        self,
        method: bytes,
        origin: tuple[str, str, int],
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> Reply:
        await asyncio.sleep(0)
        if self.stream:
            return Reply(CHUNKS, b"text/event-stream")
        return Reply([ANSWER], b"application/json")


async def _per_request_us(backends: int, stream: bool) -> float:
    with tempfile.TemporaryDirectory() as home:
        settings = GatewaySettings(
            backends=[f"http://127.0.0.1:{18001 + i}" for i in range(backends)],
            sage_home=Path(home),
        )
        app = create_gateway_app(settings)
        runtime = app.state.runtime
        source = runtime.source = FixedTable(backends)
        serve = fast_path(app, runtime)
        async with app.lifespan():
            runtime.data_plane.upstream = InstantUpstream(stream)
            await asyncio.wait_for(source.applied.wait(), 10)
            assert runtime.is_ready()
            body = json.dumps({**CHAT, "stream": stream}).encode()
            headers = [
                (b"host", b"127.0.0.1:8000"),
                (b"user-agent", b"OpenAI/Python 1.99.0"),
                (b"accept", b"application/json"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            scope: dict[str, Any] = {
                "type": "http",
                "method": "POST",
                "path": "/v1/chat/completions",
                "raw_path": b"/v1/chat/completions",
                "query_string": b"",
                "headers": headers,
                "client": ("127.0.0.1", 40000),
                "server": ("127.0.0.1", 8000),
                "scheme": "http",
                "http_version": "1.1",
            }
            request = {"type": "http.request", "body": body, "more_body": False}
            statuses: list[int] = []

            async def receive() -> dict[str, Any]:
                return request

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            best = float("inf")
            for _ in range(REPEATS):
                start = time.perf_counter()
                for _ in range(REQUESTS):
                    await serve(dict(scope), receive, send)
                best = min(best, time.perf_counter() - start)
            if set(statuses) != {200}:
                raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
            return best / REQUESTS * 1e6


def main() -> None:
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of the gateway
        run = asyncio.run
    print("data plane, µs per request (best of", REPEATS, "x", REQUESTS, "requests)")
    for label, backends, stream in (
        ("chat, 1 backend", 1, False),
        ("chat, 2 backends (cache_aware weighs)", 2, False),
        ("stream of 16 chunks, 1 backend", 1, True),
    ):
        print(f"  {label:<40} {run(_per_request_us(backends, stream)):8.1f}")


if __name__ == "__main__":
    main()
