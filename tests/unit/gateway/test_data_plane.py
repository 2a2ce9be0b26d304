"""The data plane's rules with a fake upstream: retries, budget, ejection, relay, streams.

No sockets: the data plane depends on a one-method upstream protocol, so a fake one
scripts what each engine does (refuse, answer, break mid-stream) and the ASGI side is a
recorded ``send`` and a ``receive`` that hands over the body once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from sage.unified.gateway._attempts import Origin, classify
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway._proxy import DataPlane, ProxyConfig
from sage.unified.gateway._retry_rules import FailureKind, plan_retry
from sage.unified.gateway.routing import (
    OutlierDetector,
    RetryBudget,
    RoutingLedger,
    RoutingPolicy,
    RoutingState,
    get_policy,
)
from sage.unified.gateway.upstream import (
    FirstByteTimeout,
    PoolTimeout,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamProtocolError,
)
from sage.unified.sdk.auth import TokenSet
from sage.unified.sdk.models import Backend, EngineKind, RoutingTable

pytestmark = pytest.mark.anyio

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
OK = json.dumps({"choices": [{"message": {"content": "hello"}}]}).encode()
SSE = [b'data: {"x": 1}\n\n', b'data: {"x": 2}\n\n', b"data: [DONE]\n\n"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the data plane is asyncio-only, like its server


class FakeReply:
    def __init__(
        self, status: int, body: bytes | list[bytes], *, stream: bool = False, break_after: int = -1
    ) -> None:
        self.status = status
        kind = b"text/event-stream" if stream else b"application/json"
        self.headers = [(b"content-type", kind)]
        self.chunks = body if isinstance(body, list) else [body]
        self.break_after = break_after
        self.closed = False
        self._stream: AsyncIterator[bytes] | None = None

    async def read(self) -> bytes:
        if self.break_after >= 0:
            raise UpstreamDisconnected("cut", response_started=True)
        return b"".join(self.chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        # One body, read once: iterating again goes on where the last read stopped.
        if self._stream is None:
            self._stream = self._iterate()
        return self._stream

    async def _iterate(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.break_after:
                raise UpstreamDisconnected("engine died", response_started=True)
            yield chunk

    def close(self) -> None:
        self.closed = True


class FakeUpstream:
    """Scripted engines by port: an exception to raise or a reply to give (each call)."""

    def __init__(self, script: dict[int, Any]) -> None:
        self.script = script
        self.calls: list[int] = []

    async def request(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> FakeReply:
        port = origin[2]
        self.calls.append(port)
        what = self.script[port]
        if callable(what):
            what = what()
        if isinstance(what, BaseException):
            raise what
        assert isinstance(what, FakeReply)
        return what


def table(*ports: int) -> RoutingTable:
    return RoutingTable(
        revision=1,
        backends=[
            Backend(id=f"e{p}", model="m", kind=EngineKind.LLM, url=f"http://127.0.0.1:{p}")
            for p in ports
        ],
    )


def plane(
    upstream: FakeUpstream,
    *ports: int,
    budget: RetryBudget | None = None,
    failures_to_eject: int = 5,
    policy: RoutingPolicy | None = None,
    ledger: bool = False,
) -> DataPlane:
    state = RoutingState()
    state.update(table(*ports))
    policy = policy or get_policy("round_robin")()
    return DataPlane(
        state=state,
        policy=policy,
        detector=OutlierDetector(state, consecutive_failures=failures_to_eject),
        retry_budget=budget or RetryBudget(backoff_base_s=0.0),
        upstream=upstream,
        metrics=GatewayMetrics(state, {}),
        config=ProxyConfig(api_keys=TokenSet()),
        ledger=RoutingLedger(policy) if ledger else None,
    )


class Exchange:
    """One request through ``plane``: what was sent back."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def run(
        self,
        dp: DataPlane,
        body: bytes = CHAT,
        *,
        kind: EngineKind = EngineKind.LLM,
        path: bytes = b"/v1/chat/completions",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Exchange:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            self.messages.append(dict(message))

        scope = {
            "type": "http",
            "method": "POST",
            "headers": headers or [],
            "client": ("127.0.0.1", 1),
        }
        await dp.handle(scope, receive, send, kind, path)
        return self

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: bytes) -> bytes | None:
        return dict(self.messages[0]["headers"]).get(name)


async def test_unreachable_backend_is_retried_on_another() -> None:
    up = FakeUpstream({1: UpstreamConnectError("refused"), 2: FakeReply(200, OK)})
    dp = plane(up, 1, 2)
    result = await Exchange().run(dp)
    assert (result.status, result.body) == (200, OK)
    assert up.calls == [1, 2]
    assert dp.retry_budget.active_retries == 0  # the slot went back


async def test_502_is_retried_and_4xx_passes_through_untouched() -> None:
    up = FakeUpstream({1: FakeReply(502, b"bad"), 2: FakeReply(200, OK)})
    assert (await Exchange().run(plane(up, 1, 2))).status == 200
    up = FakeUpstream({1: FakeReply(422, b'{"error": "no"}'), 2: FakeReply(200, OK)})
    result = await Exchange().run(plane(up, 1, 2))
    assert (result.status, result.body, up.calls) == (422, b'{"error": "no"}', [1])


async def test_every_backend_unreachable_is_503_with_retry_after() -> None:
    up = FakeUpstream({1: UpstreamConnectError("refused"), 2: PoolTimeout("busy")})
    result = await Exchange().run(plane(up, 1, 2))
    assert result.status == 503
    assert result.json()["error"]["code"] == "no_backend_available"
    assert result.header(b"retry-after") == b"1"


async def test_a_backend_that_answered_badly_makes_it_502() -> None:
    up = FakeUpstream({1: FakeReply(503, b"x"), 2: UpstreamConnectError("refused")})
    result = await Exchange().run(plane(up, 1, 2))
    assert result.status == 502
    assert result.json()["error"]["code"] == "upstream_failed"


async def test_no_budget_no_retry() -> None:
    up = FakeUpstream({1: FakeReply(503, b"x"), 2: FakeReply(200, OK)})
    budget = RetryBudget(budget_percent=0, min_retry_concurrency=0, backoff_base_s=0.0)
    result = await Exchange().run(plane(up, 1, 2, budget=budget))
    assert (result.status, up.calls) == (502, [1])


async def test_consecutive_failures_eject_the_backend() -> None:
    up = FakeUpstream({1: UpstreamConnectError("refused"), 2: FakeReply(200, OK)})
    dp = plane(up, 1, 2, failures_to_eject=2)
    for _ in range(4):
        assert (await Exchange().run(dp)).status == 200
    up.calls.clear()
    for _ in range(3):
        await Exchange().run(dp)
    assert up.calls == [2, 2, 2]  # 1 is ejected: not even tried


async def test_a_non_streamed_answer_cut_short_is_retried() -> None:
    up = FakeUpstream({1: FakeReply(200, OK, break_after=0), 2: FakeReply(200, OK)})
    result = await Exchange().run(plane(up, 1, 2))
    assert (result.status, result.body, up.calls) == (200, OK, [1, 2])


async def test_a_stream_is_relayed_chunk_by_chunk() -> None:
    up = FakeUpstream({1: FakeReply(200, SSE, stream=True)})
    result = await Exchange().run(plane(up, 1))
    assert result.status == 200
    assert [m["body"] for m in result.messages[1:-1]] == SSE
    assert result.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_stream_cut_after_bytes_ends_with_an_error_event_and_no_done() -> None:
    up = FakeUpstream({1: FakeReply(200, SSE, stream=True, break_after=1)})
    result = await Exchange().run(plane(up, 1))
    assert result.status == 200
    assert b"[DONE]" not in result.body
    last = json.loads(result.messages[-1]["body"].removeprefix(b"data: "))
    assert last["error"]["code"] == "stream_interrupted"
    assert up.calls == [1]  # bytes reached the client: never retried


async def test_a_client_that_leaves_closes_the_engine_response() -> None:
    reply = FakeReply(200, SSE, stream=True)
    gate = asyncio.Event()

    async def slow_chunks() -> AsyncIterator[bytes]:
        yield SSE[0]
        await gate.wait()
        yield SSE[1]

    reply._iterate = slow_chunks  # type: ignore[method-assign]
    dp = plane(FakeUpstream({1: reply}), 1)
    exchange = Exchange()
    task = asyncio.create_task(exchange.run(dp))
    await eventually(lambda: bool(exchange.messages[1:]))
    await asyncio.sleep(0.1)  # past the moment the client watch starts
    exchange.leave.set()
    await eventually(lambda: reply.closed)
    gate.set()
    await asyncio.wait_for(task, 5)
    assert reply.closed


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - plain state set by the code under test
            await asyncio.sleep(0.01)


# -- the cache-capture ledger ---------------------------------------------------------


def usage_body(prompt: int, cached: int) -> bytes:
    details = {"cached_tokens": cached} if cached else None
    return json.dumps(
        {"choices": [], "usage": {"prompt_tokens": prompt, "prompt_tokens_details": details}}
    ).encode()


async def test_the_ledger_records_what_the_engine_delivered() -> None:
    up = FakeUpstream({1: FakeReply(200, usage_body(40, 32)), 2: UpstreamConnectError("no")})
    dp = plane(up, 2, 1, ledger=True)
    assert (await Exchange().run(dp)).status == 200
    assert dp.ledger is not None
    (decision,) = dp.ledger.decisions()
    assert (decision.engine_id, decision.status, decision.attempts) == ("e1", 200, 2)
    assert (decision.prompt_tokens, decision.delivered_tokens) == (40, 32)
    assert decision.reason == "round_robin"
    assert decision.retried
    assert decision.ttft_s is not None


async def test_the_ledger_finds_the_usage_of_a_stream() -> None:
    event = b"data: " + usage_body(64, 48) + b"\n\n"
    cut = event.index(b"cached_tokens") + 3
    # The usage event cut across two reads, [DONE] in a third; or all in one read.
    for tail in (
        [event[:cut], event[cut:], b"data: [DONE]\n\n"],
        [event + b"data: [DONE]\n\n"],
    ):
        up = FakeUpstream({1: FakeReply(200, [*SSE[:2], *tail], stream=True)})
        dp = plane(up, 1, ledger=True, policy=get_policy("cache_aware")())
        result = await Exchange().run(dp)
        assert result.status == 200
        assert dp.ledger is not None
        (decision,) = dp.ledger.decisions()
        assert (decision.prompt_tokens, decision.delivered_tokens) == (64, 48)
        assert decision.reason == "only"  # one engine: no choice


async def test_failures_are_recorded_too() -> None:
    up = FakeUpstream({1: UpstreamConnectError("refused"), 2: UpstreamConnectError("refused")})
    dp = plane(up, 1, 2, ledger=True)
    assert (await Exchange().run(dp)).status == 503
    assert dp.ledger is not None
    (decision,) = dp.ledger.decisions()
    assert (decision.status, decision.attempts, decision.delivered_tokens) == (503, 2, None)


async def test_the_decision_header_is_opt_in() -> None:
    up = FakeUpstream({1: FakeReply(200, OK), 2: FakeReply(200, OK)})
    dp = plane(up, 1, 2, ledger=True, policy=get_policy("cache_aware")())
    plain = await Exchange().run(dp)
    assert plain.header(b"x-sage-route-decision") is None
    asked = await Exchange().run(dp, headers=[(b"x-sage-route", b"1")])
    header = asked.header(b"x-sage-route-decision")
    assert header is not None
    assert header.startswith(b"engine=e")
    assert b"policy=cache_aware" in header
    assert b"available_tokens=" in header
    assert b"captured_tokens=" in header


def test_failures_are_classified_by_what_the_engine_did() -> None:
    assert classify(UpstreamConnectError("refused")) is FailureKind.UNREACHED
    assert classify(PoolTimeout("busy")) is FailureKind.UNREACHED
    assert classify(UpstreamDisconnected("gone")) is FailureKind.DROPPED
    assert classify(UpstreamDisconnected("gone", response_started=True)) is FailureKind.BROKEN
    assert classify(FirstByteTimeout("slow")) is FailureKind.TIMED_OUT
    assert classify(UpstreamProtocolError("junk")) is FailureKind.BROKEN


@pytest.mark.parametrize(
    ("left", "holding", "throttle", "room", "retry", "slot"),
    [
        (0, False, True, True, False, False),
        (1, True, False, False, True, False),  # the held slot covers it
        (1, False, False, True, False, False),  # throttled
        (1, False, True, False, False, False),  # budget full
        (1, False, True, True, True, True),
    ],
)
def test_plan_retry(
    left: int, holding: bool, throttle: bool, room: bool, retry: bool, slot: bool
) -> None:
    plan = plan_retry(
        FailureKind.REFUSED,
        attempts_left=left,
        holding_slot=holding,
        throttle_allows=throttle,
        budget_has_room=room,
    )
    assert (plan.retry, plan.take_budget_slot) == (retry, slot)
    assert plan.reason


# -- hung engines (stall detection) ----------------------------------------------------


class Hang:
    """An engine that accepts the request and never answers (SIGSTOPped)."""

    def __init__(self) -> None:
        self.forever = asyncio.Event()

    async def wait(self) -> FakeReply:
        await self.forever.wait()
        raise AssertionError("unreachable")


class HangingUpstream(FakeUpstream):
    """Like FakeUpstream, but ports in ``hung`` never answer (requests nor /health), and
    ``health`` says what /health answers on the others."""

    def __init__(self, script: dict[int, Any], hung: set[int], slow_s: float = 0.0) -> None:
        super().__init__(script)
        self.hung = hung
        self.slow_s = slow_s
        self.health_calls: list[int] = []

    async def request(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> FakeReply:
        port = origin[2]
        if target == b"/health":
            self.health_calls.append(port)
            if port in self.hung:
                return await Hang().wait()
            return FakeReply(200, b"")
        if port in self.hung:
            self.calls.append(port)
            return await Hang().wait()
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        return await super().request(method, origin, target, headers, body)


def stalling_plane(upstream: FakeUpstream, *ports: int, stall_s: float = 0.3) -> DataPlane:
    dp = plane(upstream, *ports)
    dp.config.stall_timeout_s = stall_s
    dp.config.stall_probe_timeout_s = 0.2
    from sage.unified.gateway._stalls import StallMonitor

    dp.stalls = StallMonitor(dp.state, upstream, dp._origin, stall_s=stall_s, probe_timeout_s=0.2)
    return dp


async def test_a_hung_engine_is_found_and_its_request_moves_on() -> None:
    up = HangingUpstream({2: FakeReply(200, OK)}, hung={1})
    dp = stalling_plane(up, 1, 2)
    assert dp.stalls is not None
    monitor = asyncio.create_task(dp.stalls.run())
    try:
        started = asyncio.get_running_loop().time()
        result = await asyncio.wait_for(Exchange().run(dp), 5)
        took = asyncio.get_running_loop().time() - started
    finally:
        monitor.cancel()
    assert (result.status, result.body) == (200, OK)
    assert up.calls == [1, 2]
    assert 1 in up.health_calls
    assert took < 2.0  # the stall deadline and the probe, not a read timeout of minutes
    hung = dp.state.get("e1")
    assert hung is not None
    assert hung.stalled
    assert [b.key for b in dp.state.candidates("m")] == ["e2"]


async def test_every_engine_hung_is_a_503_within_the_stall_deadline() -> None:
    up = HangingUpstream({}, hung={1, 2})
    dp = stalling_plane(up, 1, 2)
    assert dp.stalls is not None
    monitor = asyncio.create_task(dp.stalls.run())
    try:
        first = await asyncio.wait_for(Exchange().run(dp), 5)
        second = await asyncio.wait_for(Exchange().run(dp), 5)
    finally:
        monitor.cancel()
    assert first.status == 503
    assert first.json()["error"]["code"] == "no_backend_available"
    assert first.header(b"retry-after") is not None
    # Both are known to hang now: the next request is refused at once, not sent.
    assert second.status == 503
    assert up.calls.count(1) + up.calls.count(2) <= 2


async def test_a_slow_but_live_engine_is_waited_for() -> None:
    up = HangingUpstream({1: FakeReply(200, OK)}, hung=set(), slow_s=0.8)
    dp = stalling_plane(up, 1)
    assert dp.stalls is not None
    monitor = asyncio.create_task(dp.stalls.run())
    try:
        result = await asyncio.wait_for(Exchange().run(dp), 5)
    finally:
        monitor.cancel()
    assert (result.status, result.body) == (200, OK)
    assert up.health_calls  # it was asked, answered, and the request went on
    live = dp.state.get("e1")
    assert live is not None
    assert not live.stalled


async def test_a_stream_whose_engine_hangs_ends_with_an_error_event() -> None:
    reply = FakeReply(200, SSE, stream=True)
    hang = asyncio.Event()

    async def then_hang() -> AsyncIterator[bytes]:
        yield SSE[0]
        await hang.wait()

    reply._iterate = then_hang  # type: ignore[method-assign]
    up = HangingUpstream({1: reply}, hung=set())
    dp = stalling_plane(up, 1)
    up.hung = {1}  # requests already sent; /health now hangs too
    assert dp.stalls is not None
    monitor = asyncio.create_task(dp.stalls.run())
    try:
        # The request itself must reach the engine: let the first call through.
        up.hung = set()
        task = asyncio.create_task(Exchange().run(dp))
        await asyncio.sleep(0.05)
        up.hung = {1}
        result = await asyncio.wait_for(task, 5)
    finally:
        monitor.cancel()
    assert result.status == 200
    assert b"[DONE]" not in result.body
    last = json.loads(result.messages[-1]["body"].removeprefix(b"data: "))
    assert last["error"]["code"] == "stream_interrupted"


async def test_an_engine_killed_under_load_fails_over_outside_the_retry_budget() -> None:
    # A budget that allows no retry at all: only requests that never reached an engine,
    # or whose engine died, may still move on.
    budget = RetryBudget(budget_percent=0, min_retry_concurrency=0, backoff_base_s=0.0)
    up = FakeUpstream({1: UpstreamDisconnected("reset"), 2: FakeReply(200, OK)})
    result = await Exchange().run(plane(up, 1, 2, budget=budget))
    assert (result.status, up.calls) == (200, [1, 2])
    up = FakeUpstream({1: FirstByteTimeout("slow"), 2: FakeReply(200, OK)})
    result = await Exchange().run(plane(up, 1, 2, budget=budget))
    assert (result.status, up.calls) == (503, [1])  # a timeout may be overload: budgeted


# -- continuation of interrupted streams ------------------------------------------------


def sse(content: str | None = None, *, role: bool = False, finish: bool = False) -> bytes:
    delta: dict[str, str] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-x",
        "created": 1,
        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if finish else None}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Recording(FakeUpstream):
    def __init__(self, script: dict[int, Any]) -> None:
        super().__init__(script)
        self.bodies: list[bytes] = []

    async def request(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> FakeReply:
        self.bodies.append(body)
        return await super().request(method, origin, target, headers, body)


STREAM_CHAT = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()


async def test_a_broken_stream_is_continued_on_another_engine() -> None:
    first = FakeReply(
        200, [sse("", role=True), sse("Once"), sse(" upon"), sse(" a")], stream=True, break_after=3
    )
    second = FakeReply(
        200,
        [sse("", role=True), sse(" time"), sse(finish=True), b"data: [DONE]\n\n"],
        stream=True,
    )
    up = Recording({1: first, 2: second})
    dp = plane(up, 1, 2)
    dp.config.continuation_models = frozenset({"m"})
    result = await Exchange().run(dp, STREAM_CHAT)
    assert result.status == 200
    continued = json.loads(up.bodies[1])
    assert continued["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert continued["continue_final_message"] is True
    text = ""
    final: dict[str, Any] = {}
    for line in result.body.split(b"\n\n"):
        if line.startswith(b"data: {"):
            event = json.loads(line.removeprefix(b"data: "))
            text += event["choices"][0]["delta"].get("content") or ""
            if event["choices"][0]["finish_reason"]:
                final = event
    assert text == "Once upon time"
    assert final["sage"] == {"continued": 1}
    assert b'"error"' not in result.body
    assert result.body.rstrip().endswith(b"data: [DONE]")


async def test_each_continuation_is_a_decision_in_the_ledger() -> None:
    first = FakeReply(
        200, [sse("", role=True), sse("Once"), sse(" upon")], stream=True, break_after=2
    )
    second = FakeReply(
        200, [sse("", role=True), sse(" a"), sse(" lost")], stream=True, break_after=2
    )
    third = FakeReply(
        200, [sse("", role=True), sse(" time"), sse(finish=True), b"data: [DONE]\n\n"], stream=True
    )
    up = Recording({1: first, 2: second, 3: third})
    dp = plane(up, 1, 2, 3, ledger=True)
    dp.config.continuation_models = frozenset({"m"})
    result = await Exchange().run(dp, STREAM_CHAT)
    assert result.status == 200
    assert b" time" in result.body
    assert result.body.rstrip().endswith(b"data: [DONE]")
    assert dp.ledger is not None
    newest_first = [
        (d.engine_id, d.reason, d.continued_from, d.status) for d in dp.ledger.decisions()
    ]
    assert newest_first == [
        ("e1", "round_robin", None, 200),  # the request's own pick, as the client saw it
        ("e3", "continuation", "e2", 200),
        ("e2", "continuation", "e1", 502),  # broke too
    ]
    assert len({d.request_id for d in dp.ledger.decisions()}) == 1
    totals = {engine: t.reasons for _, engine, t in dp.ledger.totals()}
    assert totals["e3"] == {"continuation": 1}


async def test_without_opt_in_a_broken_stream_ends_with_an_error_event() -> None:
    first = FakeReply(200, [sse("", role=True), sse("Once")], stream=True, break_after=1)
    up = Recording({1: first, 2: FakeReply(200, [sse(" time")], stream=True)})
    result = await Exchange().run(plane(up, 1, 2), STREAM_CHAT)
    assert up.calls == [1]
    assert b"stream_interrupted" in result.body


async def test_a_large_answer_is_relayed_as_it_comes_not_held() -> None:
    big = [b"x" * 600_000, b"y" * 600_000, b"z" * 600_000]
    up = FakeUpstream({1: FakeReply(200, big)})
    dp = plane(up, 1)
    dp.config.max_buffered_response_bytes = 1 << 20
    result = await Exchange().run(dp)
    assert result.status == 200
    bodies = [m["body"] for m in result.messages[1:] if m.get("body")]
    assert bodies == big  # chunk by chunk, never joined into one 1.8 MB buffer
    small = FakeUpstream({1: FakeReply(200, [b"a" * 1000, b"b" * 1000])})
    result = await Exchange().run(plane(small, 1))
    assert [m["body"] for m in result.messages[1:]] == [b"a" * 1000 + b"b" * 1000]


async def test_a_model_of_the_wrong_kind_is_a_400_naming_what_serves_the_endpoint() -> None:
    up = FakeUpstream({1: FakeReply(200, OK)})
    dp = plane(up, 1)  # "m" is an llm
    state_with_embedder = table(1)
    state_with_embedder.backends.append(
        Backend(id="e2", model="emb", kind=EngineKind.EMBEDDING, url="http://127.0.0.1:2")
    )
    dp.state.update(state_with_embedder)
    body = json.dumps({"model": "m", "input": "hi"}).encode()
    result = await Exchange().run(dp, body, kind=EngineKind.EMBEDDING, path=b"/v1/embeddings")
    assert result.status == 400  # not 503: a retry cannot help
    error = result.json()["error"]
    assert (error["code"], error["param"]) == ("model_wrong_kind", "model")
    assert "m' is llm" in error["message"]
    assert "emb" in error["message"]
    assert up.calls == []


def _form(boundary: str, model: str | None) -> bytes:
    parts = []
    if model is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\nRIFF....\r\n"
    )
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


async def test_a_transcription_form_is_routed_by_its_model_field_and_relayed_whole() -> None:
    up = FakeUpstream({1: FakeReply(200, b'{"text": "hi"}')})
    dp = plane(up, 1)
    form = _form("XyZ", "m")
    headers = [(b"content-type", b"multipart/form-data; boundary=XyZ")]
    result = await Exchange().run(dp, form, path=b"/v1/audio/transcriptions", headers=headers)
    assert (result.status, result.body, up.calls) == (200, b'{"text": "hi"}', [1])


@pytest.mark.parametrize(
    ("form", "content_type", "says"),
    [
        (_form("XyZ", None), b"multipart/form-data; boundary=XyZ", "no model field"),
        (_form("XyZ", "m"), b"application/json", "multipart/form-data"),
        (b"--XyZ\r\ngarbage", b"multipart/form-data; boundary=XyZ", "malformed"),
    ],
)
async def test_a_bad_transcription_form_is_a_400(
    form: bytes, content_type: bytes, says: str
) -> None:
    up = FakeUpstream({1: FakeReply(200, OK)})
    headers = [(b"content-type", content_type)]
    result = await Exchange().run(
        plane(up, 1), form, path=b"/v1/audio/transcriptions", headers=headers
    )
    assert result.status == 400
    assert says in result.json()["error"]["message"]
    assert up.calls == []
