"""AsyncUnifiedInferenceClient against httpx.MockTransport, on asyncio and trio."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from sage.unified.sdk.client import (
    AsyncUnifiedInferenceClient,
    ModelNotSpecifiedError,
    NoBackendAvailableError,
    RateLimitError,
    RetryEvent,
    StreamInterruptedError,
)
from sage.unified.sdk.models import EngineKind

pytestmark = pytest.mark.anyio

A, B, C = "http://a:1", "http://b:1", "http://c:1"
CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


async def wait_until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll a condition set by the client's background task (no event to wait on)."""
    with anyio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def client(
    world: Any, urls: tuple[str, ...] | str = (A, B), **kwargs: Any
) -> AsyncUnifiedInferenceClient:
    kwargs.setdefault("refresh_interval_s", 0)
    return AsyncUnifiedInferenceClient(urls, transport=world.transport(), **kwargs)


async def test_failover_to_the_second_gateway(world: Any, fakes: Any) -> None:
    world.on("b:1", CHAT, fakes.ok(fakes.chat_body("b")))
    async with client(world) as c:
        assert (await c.chat(MSGS, model="m")).text == "b"
    assert world.hits() == ["a:1", "b:1"]


async def test_three_attempts_at_most(world: Any) -> None:
    async with client(world, (A, B, C, "http://d:1")) as c:
        with pytest.raises(NoBackendAvailableError, match="sage gateway start"):
            await c.chat(MSGS, model="m")
    assert world.hits() == ["a:1", "b:1", "c:1"]


async def test_429_is_not_retried(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.status(429, "slow down", headers={"Retry-After": "1"}))
    async with client(world) as c:
        with pytest.raises(RateLimitError):
            await c.chat(MSGS, model="m")
    assert world.hits() == ["a:1"]


async def test_503_retry_after_delay_is_requested(world: Any, fakes: Any) -> None:
    world.on(
        "a:1",
        CHAT,
        fakes.status(503, "busy", headers={"Retry-After": "3"}),
        fakes.ok(fakes.chat_body()),
    )
    events: list[RetryEvent] = []
    async with client(world, A, on_retry=events.append) as c:
        with anyio.fail_after(2):  # the testing switch skips the 3 s wait
            await c.chat(MSGS, model="m")
    assert [e.delay_s for e in events] == [3.0]


async def test_parameters_pass_through(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.ok(fakes.chat_body()))
    async with client(world) as c:
        await c.chat(MSGS, model="m", temperature=0, top_p=1)
    assert world.body() == {"messages": MSGS, "model": "m", "temperature": 0, "top_p": 1}


async def test_stream_and_totals(world: Any, fakes: Any) -> None:
    usage = {
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    world.on(
        "a:1",
        CHAT,
        fakes.stream(fakes.sse(fakes.delta("a"), fakes.delta("b", "stop"), usage, "[DONE]")),
    )
    async with client(world) as c, await c.chat(MSGS, model="m", stream=True) as s:
        pieces = [piece async for piece in s]
    assert pieces == ["a", "b"]
    assert (s.text, s.finish_reason) == ("ab", "stop")
    assert s.usage is not None
    assert s.usage.completion_tokens == 2


async def test_stream_interrupted(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.stream([*fakes.sse(fakes.delta("half")), httpx.ReadError("reset")]))
    async with client(world) as c:
        s = await c.chat(MSGS, model="m", stream=True)
        with pytest.raises(StreamInterruptedError) as info:
            async for _ in s:
                pass
    assert info.value.partial_text == "half"
    assert world.hits() == ["a:1"]


async def test_early_exit_closes_the_response(world: Any, fakes: Any) -> None:
    bodies: list[Any] = []
    world.on(
        "a:1", CHAT, fakes.stream(fakes.sse(fakes.delta("a"), fakes.delta("b"), "[DONE]"), bodies)
    )
    async with client(world) as c, await c.chat(MSGS, model="m", stream=True) as s:
        async for _ in s:
            break
    assert bodies[0].closed


async def test_model_resolution_from_models_list(world: Any, fakes: Any) -> None:
    world.on("a:1", "/v1/management/backends", fakes.status(401, "no"))
    world.on("a:1", "/v1/models", fakes.ok({"data": [{"id": "x"}, {"id": "y"}]}))
    async with client(world, A) as c:
        with pytest.raises(ModelNotSpecifiedError):
            await c.generate("p")


async def test_direct_mode_with_background_watch(world: Any, fakes: Any) -> None:
    first = fakes.table(("http://e1:1", "m", EngineKind.LLM), revision=1)
    second = fakes.table(
        ("http://e1:1", "m", EngineKind.LLM), ("http://e2:1", "n", EngineKind.LLM), revision=2
    )
    world.on("cp:1", "/v1/management/backends", fakes.routing(first), fakes.routing(second))
    world.on("e1:1", CHAT, fakes.ok(fakes.chat_body("one")))
    world.on("e2:1", CHAT, fakes.ok(fakes.chat_body("two")))
    c = AsyncUnifiedInferenceClient(
        control_plane_url="http://cp:1", transport=world.transport(), refresh_interval_s=5
    )
    async with c:
        assert (await c.chat(MSGS, model="m")).text == "one"
        await wait_until(lambda: c._core.cache.revision == 2)
        assert (await c.chat(MSGS, model="n")).text == "two"
    watch_requests = [r for r in world.requests if r.url.path == "/v1/management/backends"]
    assert any(r.url.params.get("after") == "1" for r in watch_requests)


async def test_direct_mode_no_backend(world: Any, fakes: Any) -> None:
    world.on("cp:1", "/v1/management/backends", fakes.routing(fakes.table()))
    c = AsyncUnifiedInferenceClient(
        control_plane_url="http://cp:1", transport=world.transport(), refresh_interval_s=0
    )
    async with c:
        with pytest.raises(NoBackendAvailableError, match="no LLM model is served"):
            await c.chat(MSGS)
        with pytest.raises(
            NoBackendAvailableError, match="no ready embedding backend serves model 'e'"
        ):
            await c.embed("x", model="e")


async def test_watch_errors_keep_the_last_table(world: Any, fakes: Any) -> None:
    good = fakes.table(("http://e1:1", "m", EngineKind.LLM), revision=7)
    world.on("cp:1", "/v1/management/backends", fakes.routing(good), fakes.refuse)
    c = AsyncUnifiedInferenceClient(
        control_plane_url="http://cp:1", transport=world.transport(), refresh_interval_s=2
    )
    async with c:
        await wait_until(lambda: c._core.cache.last_error is not None)
        await anyio.sleep(0.2)
        assert c._core.cache.revision == 7
        # Backing off, not spinning: a handful of requests, not thousands.
        assert len(world.requests) < 6
