"""Pure pieces of the client: attempt planning, config, model resolution, SSE, decoding."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from sage.unified.sdk.client import (
    BadRequestError,
    ConfigurationError,
    ModelNotSpecifiedError,
    NoBackendAvailableError,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
)
from sage.unified.sdk.client._config import normalize_base_url, resolve_config
from sage.unified.sdk.client._discovery import (
    DiscoveryPolicy,
    TableCache,
)
from sage.unified.sdk.client._errors import APIStatusError, InvalidResponseError, status_error
from sage.unified.sdk.client._executor import RawReply, _build, decode_reply
from sage.unified.sdk.client._failover import (
    AttemptPlan,
    TargetHealth,
    backoff_delay,
    parse_retry_after,
)
from sage.unified.sdk.client._results import parse_chat, parse_embedding, parse_model_list
from sage.unified.sdk.client._routing import RoundRobin, backends_for, build_body, resolve_model
from sage.unified.sdk.client._sse import SSEDecoder, SSEEvent, StreamAccumulator
from sage.unified.sdk.models import Backend, EngineKind, EngineLoad, RoutingTable, encode
from sage.unified.sdk.protocol import ControlPlaneApi


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ attempt plan
def test_plan_tries_each_target_once_then_cycles() -> None:
    plan = AttemptPlan(["a", "b"], max_attempts=3, deadline=1e9, random=lambda: 0.0)
    order = []
    for _ in range(3):
        url = plan.next_target()
        order.append(url)
        plan.record_failure(url, "refused")
    assert order == ["a", "b", "a"]


def test_plan_excludes_the_failed_target() -> None:
    plan = AttemptPlan(["a", "b", "c"], max_attempts=3, deadline=1e9)
    assert plan.next_target() == "a"
    plan.record_failure("a", "refused")
    assert plan.next_target() == "b"
    plan.record_failure("b", "503")
    assert plan.next_target() == "c"


def test_plan_gives_up_after_max_attempts() -> None:
    plan = AttemptPlan(["a"], max_attempts=3, deadline=1e9, random=lambda: 0.0)
    delays = []
    for _ in range(3):
        delays.append(plan.record_failure(plan.next_target(), "refused"))
    assert delays[:2] == [pytest.approx(0.05), pytest.approx(0.1)]  # base 100 ms x2, half jitter
    assert delays[2] is None
    assert plan.attempts_made == 3
    assert [f.error for f in plan.failures] == ["refused"] * 3


def test_plan_honours_retry_after_when_longer_than_backoff() -> None:
    plan = AttemptPlan(["a"], max_attempts=3, deadline=1e9, random=lambda: 1.0)
    assert plan.record_failure(plan.next_target(), "503", retry_after=2.0) == 2.0
    assert plan.record_failure(plan.next_target(), "503", retry_after=0.0) == pytest.approx(0.2)


def test_plan_never_waits_past_the_deadline() -> None:
    clock = FakeClock()
    plan = AttemptPlan(["a", "b"], max_attempts=3, deadline=clock.now + 5.0, clock=clock)
    assert plan.remaining() == 5.0
    # Retry-After beyond the deadline: give up now rather than wait for nothing.
    assert plan.record_failure(plan.next_target(), "503", retry_after=10.0) is None
    plan2 = AttemptPlan(["a", "b"], max_attempts=3, deadline=clock.now + 5.0, clock=clock)
    clock.now += 4.99
    assert plan2.record_failure(plan2.next_target(), "refused") is None
    clock.now += 1.0
    assert plan2.remaining() == 0.0


def test_plan_needs_a_target() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        AttemptPlan([], max_attempts=3, deadline=1.0)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    assert backoff_delay(0, random=lambda: 0.0) == pytest.approx(0.05)
    assert backoff_delay(0, random=lambda: 1.0) == pytest.approx(0.1)
    assert backoff_delay(3, random=lambda: 1.0) == pytest.approx(0.8)
    assert backoff_delay(30, random=lambda: 1.0) == pytest.approx(5.0)


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    date = email.utils.formatdate(1000.0 + 7, usegmt=True)
    assert parse_retry_after(date, now=1000.0) == pytest.approx(7.0)


def test_target_health_moves_recent_failures_last() -> None:
    clock = FakeClock()
    health = TargetHealth(cooldown_s=10.0, clock=clock)
    health.record_failure("a")
    assert health.order(["a", "b", "c"]) == ["b", "c", "a"]
    clock.now += 11
    assert health.order(["a", "b", "c"]) == ["a", "b", "c"]
    health.record_failure("b")
    health.record_success("b")
    assert health.order(["a", "b"]) == ["a", "b"]


# ------------------------------------------------------------------------ config
def test_config_needs_a_gateway_or_control_plane() -> None:
    with pytest.raises(ConfigurationError, match="SAGE_GATEWAY_URL"):
        resolve_config(environ={})


def test_config_reads_the_environment() -> None:
    cfg = resolve_config(
        environ={
            "SAGE_GATEWAY_URL": "http://a:8000/v1/, http://b:8000,http://a:8000",
            "SAGE_API_KEY": "k",
        }
    )
    assert cfg.gateway_urls == ("http://a:8000", "http://b:8000")
    assert cfg.api_key == "k"
    assert not cfg.direct


def test_config_arguments_win_and_direct_mode() -> None:
    env = {"SAGE_GATEWAY_URL": "http://env:1", "SAGE_API_KEY": "env"}
    cfg = resolve_config(gateway_urls=["http://arg:1"], api_key="arg", environ=env)
    assert (cfg.gateway_urls, cfg.api_key) == (("http://arg:1",), "arg")
    direct = resolve_config(control_plane_url="http://cp:8100/", environ=env)
    assert direct.direct
    assert direct.management_urls == ("http://cp:8100",)
    with pytest.raises(ConfigurationError):
        resolve_config(gateway_urls="http://a:1", control_plane_url="http://b:1", environ={})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"connect_timeout": -1},
        {"max_attempts": 0},
        {"max_attempts": 11},
        {"refresh_interval_s": -1},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        resolve_config(gateway_urls="http://a:1", environ={}, **kwargs)  # type: ignore[arg-type]


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000"
    with pytest.raises(ConfigurationError):
        normalize_base_url("ftp://h")
    with pytest.raises(ConfigurationError):
        normalize_base_url("localhost:8000")


# ------------------------------------------------------------- model resolution
def test_resolve_model_prefers_requested_then_default_then_single() -> None:
    assert resolve_model("x", "d", EngineKind.LLM, ["a", "b"], source="s") == "x"
    assert resolve_model(None, "d", EngineKind.LLM, ["a", "b"], source="s") == "d"
    assert resolve_model(None, None, EngineKind.LLM, ["a", "a"], source="s") == "a"


def test_resolve_model_several_or_none() -> None:
    with pytest.raises(ModelNotSpecifiedError, match="a, b") as info:
        resolve_model(None, None, EngineKind.LLM, ["b", "a"], source="s")
    assert info.value.models == ["a", "b"]
    with pytest.raises(NoBackendAvailableError, match="sage llm engine start"):
        resolve_model(None, None, EngineKind.EMBEDDING, [], source="the gateway")


def _table() -> RoutingTable:
    return RoutingTable(
        revision=3,
        backends=[
            Backend(id="1", model="m", kind=EngineKind.LLM, url="http://e1:1"),
            Backend(id="2", model="m", kind=EngineKind.LLM, url="http://e2:1/"),
            Backend(id="3", model="emb", kind=EngineKind.EMBEDDING, url="http://e3:1"),
        ],
    )


def test_backends_for_filters_by_model_and_kind() -> None:
    assert [b.id for b in backends_for(_table(), "m", EngineKind.LLM)] == ["1", "2"]
    assert [b.id for b in backends_for(_table(), "emb", EngineKind.EMBEDDING)] == ["3"]
    with pytest.raises(NoBackendAvailableError, match="served LLM models: m"):
        backends_for(_table(), "other", EngineKind.LLM)


def test_round_robin_rotates_and_prefers_less_load() -> None:
    rr = RoundRobin()
    backends = backends_for(_table(), "m", EngineKind.LLM)
    assert rr.order(backends) == ["http://e1:1", "http://e2:1"]
    assert rr.order(backends) == ["http://e2:1", "http://e1:1"]
    backends[1].load = EngineLoad(waiting=0, running=0)
    backends[0].load = EngineLoad(waiting=5, running=1)
    assert rr.order(backends)[0] == "http://e2:1"


def test_build_body_passes_parameters_unchanged() -> None:
    body = build_body(
        {"messages": []}, "m", False, {"temperature": 0, "max_tokens": 0, "top_p": None}
    )
    assert body == {"messages": [], "model": "m", "temperature": 0, "max_tokens": 0, "top_p": None}
    streamed = build_body({"prompt": "p"}, "m", True, {})
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}
    own = build_body({"prompt": "p"}, "m", True, {"stream_options": {"include_usage": False}})
    assert own["stream_options"] == {"include_usage": False}


# --------------------------------------------------------------------------- SSE
def test_sse_deltas_usage_and_done() -> None:
    decoder, acc = SSEDecoder(), StreamAccumulator()
    lines = [
        ": keep-alive",
        "",
        'data: {"model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}',
        "",
        'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}',
        "",
        "data:",
        "",
        'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}',
        "",
        'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
        "",
        "data: [DONE]",
        "",
    ]
    deltas = []
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            delta = acc.on_event(event)
            if delta:
                deltas.append(delta)
    assert deltas == ["Hel", "lo"]
    assert acc.text == "Hello"
    assert acc.finish_reason == "stop"
    assert acc.model == "m"
    assert acc.usage is not None
    assert (acc.usage.prompt_tokens, acc.usage.total_tokens) == (3, 5)
    assert acc.done
    acc.on_end()


def test_sse_completion_text_and_multiline_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed('data: {"choices":') is None
    assert decoder.feed('data: [{"text":"x"}]}') is None
    event = decoder.feed("")
    assert event is not None
    assert StreamAccumulator().on_event(event) == "x"


def test_sse_error_event_raises_with_partial_text() -> None:
    acc = StreamAccumulator()
    decoder = SSEDecoder()
    for line in ['data: {"choices":[{"delta":{"content":"part"}}]}', ""]:
        event = decoder.feed(line)
        if event:
            acc.on_event(event)
    decoder.feed(
        'data: {"error":{"message":"backend died","type":"upstream_error","code":"stream_cut"}}'
    )
    event = decoder.feed("")
    assert event is not None
    with pytest.raises(StreamInterruptedError, match="backend died") as info:
        acc.on_event(event)
    assert info.value.partial_text == "part"
    assert info.value.error_code == "stream_cut"


def test_sse_named_error_event() -> None:
    decoder = SSEDecoder()
    decoder.feed("event: error")
    decoder.feed('data: {"message":"boom"}')
    event = decoder.feed("")
    assert event is not None
    assert event.event == "error"
    with pytest.raises(StreamInterruptedError, match="boom"):
        StreamAccumulator().on_event(event)


def test_stream_ending_without_done_or_finish_is_interrupted() -> None:
    acc = StreamAccumulator()
    acc.on_event(SSEEvent("message", '{"choices":[{"delta":{"content":"ab"}}]}'))
    with pytest.raises(StreamInterruptedError) as info:
        acc.on_end()
    assert info.value.partial_text == "ab"


def test_stream_with_finish_reason_but_no_done_is_complete() -> None:
    acc = StreamAccumulator()
    acc.on_event(
        SSEEvent("message", '{"choices":[{"delta":{"content":"a"},"finish_reason":"length"}]}')
    )
    acc.on_end()
    assert acc.finish_reason == "length"


# ----------------------------------------------------------------------- decoding
def test_parse_chat_and_embeddings() -> None:
    chat = parse_chat(
        {
            "model": "m",
            "choices": [
                {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2},
        }
    )
    assert (chat.text, chat.model, chat.finish_reason) == ("hi", "m", "stop")
    assert chat.usage is not None
    assert chat.usage.total_tokens == 3
    emb = parse_embedding(
        {
            "model": "e",
            "data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1, 0]}],
        }
    )
    assert emb.vectors == [[1.0, 0.0], [2.0]]
    with pytest.raises(InvalidResponseError):
        parse_chat({"choices": []})
    with pytest.raises(InvalidResponseError):
        parse_embedding({"data": [{"index": 0}]})
    assert parse_model_list({"data": [{"id": "b"}, {"id": "a"}]}) == ["a", "b"]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (404, NotFoundError),
        (429, RateLimitError),
        (503, ServerError),
        (418, APIStatusError),
    ],
)
def test_status_error_classes(status: int, cls: type[APIStatusError]) -> None:
    error = status_error(
        status, b'{"error":{"message":"nope","type":"t","code":"model_not_found"}}'
    )
    assert type(error) is cls
    assert (error.status_code, error.message, error.error_type, error.error_code) == (
        status,
        "nope",
        "t",
        "model_not_found",
    )


def test_status_error_with_non_json_body() -> None:
    error = status_error(502, b"<html>bad gateway</html>")
    assert error.body is None
    assert "bad gateway" in error.message


# ----------------------------------------------------------------------- discovery
def test_discovery_policy_watch_timing() -> None:
    policy = DiscoveryPolicy(refresh_interval_s=30.0, watch=True)
    assert policy.request(None) == (None, None)
    assert policy.request(4) == (4, 30.0)
    assert policy.after_success(asked_wait=None, changed=True, elapsed=0.0) < 0.1
    assert policy.after_success(asked_wait=30.0, changed=False, elapsed=30.0) < 0.1
    # An unchanged immediate answer: the server ignores wait; fall back to polling.
    assert policy.after_success(asked_wait=30.0, changed=False, elapsed=0.01) == 30.0
    no_watch = DiscoveryPolicy(refresh_interval_s=7.0, watch=False)
    assert no_watch.request(4) == (None, None)
    assert no_watch.after_success(asked_wait=None, changed=True, elapsed=0) == 7.0


def test_discovery_policy_backs_off_on_errors() -> None:
    policy = DiscoveryPolicy(refresh_interval_s=4.0)
    assert [policy.after_error() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    policy.after_success(asked_wait=None, changed=True, elapsed=0)
    assert policy.after_error() == 0.5
    assert policy.after_error(permanent=True) == 4.0


BACKENDS = ControlPlaneApi.BACKENDS


def test_table_cache_and_decoding() -> None:
    clock = FakeClock()
    cache = TableCache(clock=clock)
    assert cache.table is None
    assert cache.age() is None
    table = decode_reply(BACKENDS, _reply(200, encode(_table())))
    assert cache.update(table) is True
    assert cache.update(table) is False
    clock.now += 2
    assert cache.age() == 2
    assert cache.revision == 3
    with pytest.raises(InvalidResponseError):
        decode_reply(BACKENDS, _reply(200, b"[]"))
    with pytest.raises(APIStatusError):
        decode_reply(BACKENDS, _reply(401, b"{}"))
    assert _build(BACKENDS, None, None, {"after": 3, "wait": 30.0}, None).params == {
        "after": "3",
        "wait": "30",
    }
    assert _build(BACKENDS, None, None, {"after": None, "wait": 30.0}, None).params == {
        "wait": "30"
    }


def _reply(status: int, content: bytes) -> RawReply:
    return RawReply(status, content, httpx.Headers(), "u")
