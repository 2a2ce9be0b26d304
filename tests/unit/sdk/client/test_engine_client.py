"""AsyncEngineClient.read: any status is an answer, no answer says why, never raises;
every phase of a request gets the call's timeout."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from sage.unified.sdk.client import AsyncEngineClient, EngineAnswer
from sage.unified.sdk.protocol import EngineApi

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response]


def _engine(handler: Handler, timeout: float = 1.0) -> AsyncEngineClient:
    return AsyncEngineClient(
        "http://engine:8900/", timeout=timeout, transport=httpx.MockTransport(handler)
    )


async def test_any_status_is_an_answer() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text="vllm:num_requests_running 1\n")
        return httpx.Response(503, json={"error": {"message": "loading", "type": "x"}})

    engine = _engine(answer)
    assert (await engine.read(EngineApi.HEALTH)).status == 503
    metrics = await engine.read(EngineApi.METRICS)
    assert (metrics.status, metrics.text) == (200, "vllm:num_requests_running 1\n")


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (httpx.ConnectError("refused"), EngineAnswer(None, failure="connection refused")),
        (httpx.ReadTimeout("hung"), EngineAnswer(None, failure="timed out", timed_out=True)),
        (httpx.PoolTimeout("busy"), EngineAnswer(None, failure="timed out", timed_out=True)),
        (httpx.RemoteProtocolError("cut"), EngineAnswer(None, failure="RemoteProtocolError")),
        (httpx.DecodingError("bad gzip"), EngineAnswer(None, failure="DecodingError")),
    ],
)
async def test_no_answer_says_why_and_never_raises(
    failure: httpx.HTTPError, expected: EngineAnswer
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    assert await _engine(fail).read(EngineApi.HEALTH) == expected


@pytest.mark.parametrize(("call_timeout", "phases"), [(None, 1.0), (0.4, 0.4), (5.0, 5.0)])
async def test_every_phase_gets_the_calls_timeout(
    call_timeout: float | None, phases: float
) -> None:
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200)

    await _engine(record, timeout=1.0).read(EngineApi.HEALTH, timeout_s=call_timeout)
    assert seen == [{"connect": phases, "read": phases, "write": phases, "pool": phases}]


async def test_the_probe_of_a_registered_engine_still_reads_health() -> None:
    engine = _engine(lambda request: httpx.Response(503))
    assert await engine.health() == (False, "/health answered 503")
    assert await _engine(lambda request: httpx.Response(200)).health() == (True, "ok")
