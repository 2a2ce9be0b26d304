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

    async def read(self) -> bytes:
        if self.break_after >= 0:
            raise UpstreamDisconnected("cut", response_started=True)
        return b"".join(self.chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

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
        self, dp: DataPlane, body: bytes = CHAT, headers: list[tuple[bytes, bytes]] | None = None
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
        await dp.handle(scope, receive, send, EngineKind.LLM, b"/v1/chat/completions")
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
    tail = b"data: " + usage_body(64, 48) + b"\n\ndata: [DONE]\n\n"
    up = FakeUpstream({1: FakeReply(200, [*SSE[:2], tail[:20], tail[20:]], stream=True)})
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
