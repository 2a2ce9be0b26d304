"""UnifiedInferenceClient (sync) against httpx.MockTransport: failover, errors, streams."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from sage.unified.sdk.client import (
    APIStatusError,
    BadRequestError,
    ChatResult,
    ConfigurationError,
    ModelNotSpecifiedError,
    NoBackendAvailableError,
    NotFoundError,
    RetryEvent,
    ServerError,
    StreamInterruptedError,
    UnifiedInferenceClient,
)
from sage.unified.sdk.models import EngineKind

A, B, C, D = "http://a:1", "http://b:1", "http://c:1", "http://d:1"
CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


def client(
    world: Any, urls: tuple[str, ...] | str = (A, B), **kwargs: Any
) -> UnifiedInferenceClient:
    kwargs.setdefault("refresh_interval_s", 0)
    return UnifiedInferenceClient(urls, transport=world.transport(), **kwargs)


def test_first_gateway_refuses_second_serves(world: Any, fakes: Any) -> None:
    world.on("b:1", CHAT, fakes.ok(fakes.chat_body("from b")))
    events: list[RetryEvent] = []
    with client(world, on_retry=events.append) as c:
        result = c.chat(MSGS, model="m")
    assert isinstance(result, ChatResult)
    assert result.text == "from b"
    assert result.usage is not None
    assert result.usage.total_tokens == 4
    assert world.hits() == ["a:1", "b:1"]
    assert [(e.attempt, e.url) for e in events] == [(1, A)]
    assert "Connection refused" in events[0].error


def test_dead_gateway_is_tried_last_on_the_next_call(world: Any, fakes: Any) -> None:
    world.on("b:1", CHAT, fakes.ok(fakes.chat_body()))
    with client(world) as c:
        c.chat(MSGS, model="m")
        c.chat(MSGS, model="m")
    assert world.hits() == ["a:1", "b:1", "b:1"]


def test_at_most_three_attempts_then_a_helpful_error(world: Any) -> None:
    with client(world, (A, B, C, D)) as c, pytest.raises(NoBackendAvailableError) as info:
        c.chat(MSGS, model="m")
    assert world.hits() == ["a:1", "b:1", "c:1"]
    message = str(info.value)
    assert A in message
    assert C in message
    assert "Connection refused" in message
    assert "sage gateway start" in message
    assert [a.url for a in info.value.attempts] == [A, B, C]


def test_read_timeout_before_headers_is_retried(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.read_timeout)
    world.on("b:1", CHAT, fakes.ok(fakes.chat_body()))
    with client(world) as c:
        assert c.chat(MSGS, model="m").text == "hello"
    assert world.hits() == ["a:1", "b:1"]


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422, 429])
def test_4xx_is_never_retried(world: Any, fakes: Any, code: int) -> None:
    world.on("a:1", CHAT, fakes.status(code, "bad"))
    world.on("b:1", CHAT, fakes.ok(fakes.chat_body()))
    with client(world) as c, pytest.raises(APIStatusError) as info:
        c.chat(MSGS, model="m")
    assert info.value.status_code == code
    assert world.hits() == ["a:1"]


def test_unknown_model_is_not_found_with_the_servers_message(world: Any, fakes: Any) -> None:
    world.on(
        "a:1", CHAT, fakes.status(404, "The model `x` does not exist.", code_str="model_not_found")
    )
    with client(world) as c, pytest.raises(NotFoundError, match="does not exist") as info:
        c.chat(MSGS, model="x")
    assert info.value.error_code == "model_not_found"
    assert info.value.body["error"]["type"] == "t"


def test_503_retry_after_is_honoured(world: Any, fakes: Any) -> None:
    world.on(
        "a:1",
        CHAT,
        fakes.status(503, "busy", headers={"Retry-After": "2"}),
        fakes.ok(fakes.chat_body()),
    )
    events: list[RetryEvent] = []
    started = time.monotonic()
    with client(world, A, on_retry=events.append) as c:
        assert c.chat(MSGS, model="m").text == "hello"
    assert time.monotonic() - started < 1.0  # the testing switch skipped the wait
    assert [e.delay_s for e in events] == [2.0]
    assert world.hits() == ["a:1", "a:1"]


def test_retry_after_past_the_deadline_gives_up(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.status(503, "busy", headers={"Retry-After": "120"}))
    with client(world, A, timeout=5) as c, pytest.raises(ServerError, match="busy") as info:
        c.chat(MSGS, model="m")
    assert info.value.status_code == 503
    assert world.hits() == ["a:1"]


def test_5xx_everywhere_raises_the_last_server_error_with_attempts(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.status(502, "no upstream"))
    world.on("b:1", CHAT, fakes.status(504, "slow upstream"))
    with client(world) as c, pytest.raises(ServerError, match="no upstream") as info:
        c.chat(MSGS, model="m")
    assert world.hits() == ["a:1", "b:1", "a:1"]
    assert [a.url for a in info.value.attempts] == [A, B]


def test_500_is_not_retried(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.status(500, "bug"))
    with client(world) as c, pytest.raises(ServerError):
        c.chat(MSGS, model="m")
    assert world.hits() == ["a:1"]


def test_parameters_pass_through_unchanged(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.ok(fakes.chat_body()))
    with client(world, api_key="sk-1") as c:
        c.chat(MSGS, model="m", temperature=0, max_tokens=5, seed=0)
    body = world.body()
    assert body == {"messages": MSGS, "model": "m", "temperature": 0, "max_tokens": 5, "seed": 0}
    assert world.requests[0].headers["authorization"] == "Bearer sk-1"


def test_generate_and_embed(world: Any, fakes: Any) -> None:
    world.on(
        "a:1",
        "/v1/completions",
        fakes.ok({"model": "m", "choices": [{"text": "done", "finish_reason": "length"}]}),
    )
    world.on(
        "a:1",
        "/v1/embeddings",
        fakes.ok({"model": "e", "data": [{"index": 0, "embedding": [0.5, 1]}]}),
    )
    with client(world) as c:
        completion = c.generate("p", model="m", temperature=0.0)
        embedding = c.embed("one", model="e")
    assert (completion.text, completion.finish_reason) == ("done", "length")
    assert world.body(0) == {"prompt": "p", "model": "m", "temperature": 0.0}
    assert embedding.vectors == [[0.5, 1.0]]
    assert world.body(1) == {"input": ["one"], "model": "e"}


def test_stream_yields_deltas_and_totals(world: Any, fakes: Any) -> None:
    world.on(
        "a:1",
        CHAT,
        fakes.stream(
            fakes.sse(
                fakes.delta("Hel"),
                fakes.delta("lo", "stop"),
                {
                    "choices": [],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                },
                "[DONE]",
            )
        ),
    )
    with client(world) as c, c.chat(MSGS, model="m", stream=True) as s:
        assert list(s) == ["Hel", "lo"]
    assert s.text == "Hello"
    assert s.finish_reason == "stop"
    assert s.usage is not None
    assert s.usage.total_tokens == 3
    assert world.body()["stream"] is True
    assert world.body()["stream_options"] == {"include_usage": True}


def test_stream_cut_after_data_raises_with_partial_text(world: Any, fakes: Any) -> None:
    items = [
        *fakes.sse(fakes.delta("par"), fakes.delta("tial")),
        httpx.RemoteProtocolError("peer closed"),
    ]
    world.on("a:1", CHAT, fakes.stream(items))
    world.on("b:1", CHAT, fakes.ok(fakes.chat_body()))
    with client(world) as c:
        s = c.chat(MSGS, model="m", stream=True)
        received = []
        with pytest.raises(StreamInterruptedError, match="peer closed") as info:
            received.extend(s)
    assert received == ["par", "tial"]
    assert info.value.partial_text == "partial"
    assert world.hits() == ["a:1"]  # no silent re-issue


def test_stream_in_band_error_event(world: Any, fakes: Any) -> None:
    items = fakes.sse(
        fakes.delta("x"), {"error": {"message": "engine died", "type": "upstream_error"}}
    )
    world.on("a:1", CHAT, fakes.stream(items))
    with client(world) as c, pytest.raises(StreamInterruptedError, match="engine died") as info:
        list(c.chat(MSGS, model="m", stream=True))
    assert info.value.partial_text == "x"
    assert info.value.error_type == "upstream_error"


def test_stream_closed_without_done_is_interrupted(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.stream(fakes.sse(fakes.delta("x"))))
    with client(world) as c, pytest.raises(StreamInterruptedError):
        list(c.chat(MSGS, model="m", stream=True))


def test_leaving_a_stream_early_closes_the_response(world: Any, fakes: Any) -> None:
    bodies: list[Any] = []
    world.on(
        "a:1", CHAT, fakes.stream(fakes.sse(fakes.delta("a"), fakes.delta("b"), "[DONE]"), bodies)
    )
    with client(world) as c:
        with c.chat(MSGS, model="m", stream=True) as s:
            assert next(iter(s)) == "a"
        assert bodies[0].closed


def test_streaming_generate_failover_before_first_byte(world: Any, fakes: Any) -> None:
    world.on("a:1", "/v1/completions", fakes.status(503, "draining"))
    chunk = {"choices": [{"text": "t", "finish_reason": "stop"}]}
    world.on("b:1", "/v1/completions", fakes.stream(fakes.sse(chunk, "[DONE]")))
    with client(world) as c:
        assert list(c.generate("p", model="m", stream=True)) == ["t"]
    assert world.hits() == ["a:1", "b:1"]


# ------------------------------------------------------------------ model choice
def test_single_served_model_is_used_when_omitted(world: Any, fakes: Any) -> None:
    t = fakes.table(
        ("http://e:1", "only", EngineKind.LLM), ("http://f:1", "emb", EngineKind.EMBEDDING)
    )
    world.on("a:1", "/v1/management/backends", fakes.routing(t))
    world.on("a:1", CHAT, fakes.ok(fakes.chat_body()))
    world.on("a:1", "/v1/embeddings", fakes.ok({"data": [{"embedding": [1]}]}))
    with client(world, A) as c:
        c.chat(MSGS)
        assert world.body()["model"] == "only"
        c.embed(["x"])
        assert world.body()["model"] == "emb"


def test_several_models_need_a_choice(world: Any, fakes: Any) -> None:
    world.on("a:1", "/v1/management/backends", fakes.status(403, "admin only"))
    world.on("a:1", "/v1/models", fakes.ok({"data": [{"id": "m1"}, {"id": "m2"}]}))
    with client(world, A) as c, pytest.raises(ModelNotSpecifiedError, match="m1, m2"):
        c.chat(MSGS)


def test_no_model_served(world: Any, fakes: Any) -> None:
    world.on("a:1", "/v1/management/backends", fakes.routing(fakes.table()))
    with (
        client(world, A) as c,
        pytest.raises(NoBackendAvailableError, match="sage llm engine start"),
    ):
        c.chat(MSGS)


def test_default_model_needs_no_lookup(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.ok(fakes.chat_body()))
    with client(world, A, default_llm_model="d") as c:
        c.chat(MSGS)
    assert world.body()["model"] == "d"
    assert world.hits() == ["a:1"]


def test_models_lists_the_gateways_models(world: Any, fakes: Any) -> None:
    world.on("b:1", "/v1/models", fakes.ok({"object": "list", "data": [{"id": "z"}, {"id": "y"}]}))
    with client(world) as c:
        assert c.models() == ["y", "z"]


# ------------------------------------------------------------------- direct mode
def direct(world: Any, **kwargs: Any) -> UnifiedInferenceClient:
    kwargs.setdefault("refresh_interval_s", 0)
    return UnifiedInferenceClient(
        control_plane_url="http://cp:1", transport=world.transport(), **kwargs
    )


def test_direct_mode_routes_by_kind_and_fails_over(world: Any, fakes: Any) -> None:
    t = fakes.table(
        ("http://e1:1", "m", EngineKind.LLM),
        ("http://e2:1", "m", EngineKind.LLM),
        ("http://e3:1", "emb", EngineKind.EMBEDDING),
    )
    world.on("cp:1", "/v1/management/backends", fakes.routing(t))
    world.on("e2:1", CHAT, fakes.ok(fakes.chat_body()))
    world.on("e3:1", "/v1/embeddings", fakes.ok({"data": [{"embedding": [1]}]}))
    with direct(world, api_key="admin", engine_api_key="ek") as c:
        assert c.chat(MSGS).text == "hello"
        c.embed("x")
        assert c.models() == ["emb", "m"]
        assert c.backends().revision == 1
    assert world.hits(CHAT) == ["e1:1", "e2:1"]
    assert world.hits("/v1/embeddings") == ["e3:1"]
    assert world.requests[0].headers["authorization"] == "Bearer admin"
    assert world.requests[-1].headers["authorization"] == "Bearer admin"
    assert world.requests[1].headers["authorization"] == "Bearer ek"


def test_direct_mode_without_backends(world: Any, fakes: Any) -> None:
    world.on("cp:1", "/v1/management/backends", fakes.routing(fakes.table()))
    with direct(world) as c, pytest.raises(NoBackendAvailableError, match="sage llm engine start"):
        c.chat(MSGS, model="m")


def test_direct_mode_control_plane_down(world: Any) -> None:
    with direct(world) as c, pytest.raises(NoBackendAvailableError, match="cp:1") as info:
        c.chat(MSGS, model="m")
    assert "sage gateway start" in str(info.value)


def test_direct_mode_unknown_model_refreshes_the_table_once(world: Any, fakes: Any) -> None:
    old = fakes.table(("http://e1:1", "m", EngineKind.LLM), revision=1)
    new = fakes.table(
        ("http://e1:1", "m", EngineKind.LLM), ("http://e2:1", "n", EngineKind.LLM), revision=2
    )
    world.on("cp:1", "/v1/management/backends", fakes.routing(old), fakes.routing(new))
    world.on("e2:1", CHAT, fakes.ok(fakes.chat_body()))
    with direct(world, refresh_interval_s=30) as c:
        c._core.cache.update(old)  # as if read more than a moment ago
        c._core.cache._updated_at = -100.0
        assert c.chat(MSGS, model="n").text == "hello"


def test_background_discovery_thread_stops_with_the_client(world: Any, fakes: Any) -> None:
    world.on(
        "cp:1",
        "/v1/management/backends",
        fakes.routing(fakes.table(("http://e1:1", "m", EngineKind.LLM))),
    )
    c = direct(world, refresh_interval_s=5, watch=False)
    with c:
        thread = c._thread
        assert thread is not None
        deadline = time.monotonic() + 5
        while c._core.cache.table is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c._core.cache.table is not None
    thread.join(timeout=2)
    assert not thread.is_alive()


# ------------------------------------------------------------------ configuration
def test_no_gateway_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGE_GATEWAY_URL", raising=False)
    with pytest.raises(ConfigurationError, match="SAGE_GATEWAY_URL"):
        UnifiedInferenceClient()


def test_create_alias_and_env(monkeypatch: pytest.MonkeyPatch, world: Any, fakes: Any) -> None:
    monkeypatch.setenv("SAGE_GATEWAY_URL", "http://a:1/v1")
    monkeypatch.setenv("SAGE_API_KEY", "envkey")
    world.on("a:1", CHAT, fakes.ok(fakes.chat_body()))
    with UnifiedInferenceClient.create(transport=world.transport(), refresh_interval_s=0) as c:
        c.chat(MSGS, model="m")
    assert world.requests[0].headers["authorization"] == "Bearer envkey"


def test_bad_request_keeps_the_body(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.status(400, "max_tokens too large", code_str="invalid_value"))
    with client(world) as c, pytest.raises(BadRequestError) as info:
        c.chat(MSGS, model="m", max_tokens=10**9)
    assert info.value.message == "max_tokens too large"
    assert info.value.error_code == "invalid_value"


@pytest.mark.anyio
async def test_sync_client_works_inside_a_running_event_loop(world: Any, fakes: Any) -> None:
    world.on("a:1", CHAT, fakes.ok(fakes.chat_body("in loop")))
    with client(world, A) as c:
        assert c.chat(MSGS, model="m").text == "in loop"
