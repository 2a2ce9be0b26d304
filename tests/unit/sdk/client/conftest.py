"""Fixtures for the client's unit tests: the testing switch and a fake HTTP world."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from sage.unified.sdk.client import set_testing
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable, encode

Behaviour = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def no_backoff_waits() -> Iterator[None]:
    previous = set_testing(True)
    yield
    set_testing(previous)


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body given chunk by chunk; an exception item is raised at its turn."""

    def __init__(self, items: list[bytes | Exception]) -> None:
        self.items = items
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for item in self.items:
            if isinstance(item, Exception):
                raise item
            yield item

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for item in self.items:
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def sse(*chunks: dict[str, Any] | str) -> list[bytes | Exception]:
    return [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode() for c in chunks]


def chat_body(text: str = "hello", model: str = "m") -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }


def table(*rows: tuple[str, str, EngineKind], revision: int = 1) -> RoutingTable:
    return RoutingTable(
        revision=revision,
        backends=[Backend(id=f"e{i}", model=m, kind=k, url=u) for i, (u, m, k) in enumerate(rows)],
    )


class FakeWorld:
    """Routes requests by ``host:port`` and path to scripted behaviours; records them all."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], list[Behaviour] | Behaviour] = {}

    def on(self, origin: str, path: str, *behaviours: Behaviour) -> None:
        """Answer with ``behaviours`` in turn (the last one repeats)."""
        self.routes[(origin, path)] = list(behaviours)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (f"{request.url.host}:{request.url.port}", request.url.path)
        script = self.routes.get(key)
        if script is None:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        assert isinstance(script, list)
        behaviour = script.pop(0) if len(script) > 1 else script[0]
        return behaviour(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def hits(self, path: str | None = None) -> list[str]:
        return [
            f"{r.url.host}:{r.url.port}"
            for r in self.requests
            if path is None or r.url.path == path
        ]

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def ok(body: Any) -> Behaviour:
    return lambda request: httpx.Response(200, json=body)


def status(
    code: int, message: str = "err", headers: dict[str, str] | None = None, code_str: str = "x"
) -> Behaviour:
    return lambda request: httpx.Response(
        code, json={"error": {"message": message, "type": "t", "code": code_str}}, headers=headers
    )


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def stream(items: list[bytes | Exception], holder: list[Chunks] | None = None) -> Behaviour:
    def respond(request: httpx.Request) -> httpx.Response:
        body = Chunks(list(items))
        if holder is not None:
            holder.append(body)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    return respond


def routing(t: RoutingTable) -> Behaviour:
    return lambda request: httpx.Response(200, content=encode(t))


class Fakes:
    """The helpers above, handed to tests by the ``fakes`` fixture."""

    Chunks = Chunks
    sse = staticmethod(sse)
    chat_body = staticmethod(chat_body)
    delta = staticmethod(delta)
    table = staticmethod(table)
    ok = staticmethod(ok)
    status = staticmethod(status)
    refuse = staticmethod(refuse)
    read_timeout = staticmethod(read_timeout)
    stream = staticmethod(stream)
    routing = staticmethod(routing)


@pytest.fixture
def fakes() -> type[Fakes]:
    return Fakes


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()
