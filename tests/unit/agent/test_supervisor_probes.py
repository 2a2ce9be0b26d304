"""HttpEngineProbe: readiness needs /health 200 *and* the model listed; load never raises."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from sage.unified.agent.probes import HttpEngineProbe
from sage.unified.sdk.client import AsyncEngineClient
from sage.unified.sdk.clock import FakeClock

pytestmark = pytest.mark.anyio

METRICS = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
vllm:num_requests_waiting{model_name="m"} 1.0
vllm:kv_cache_usage_perc{model_name="m"} 0.25
"""


def _probe(handler: Callable[[httpx.Request], httpx.Response]) -> HttpEngineProbe:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    engine = AsyncEngineClient("http://engine:8900/", http=client, timeout=1.0)
    return HttpEngineProbe(engine, "qwen", clock=FakeClock())


def _engine(
    health: int = 200, models: list[str] | None = None, metrics: int = 200
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(health)
        if request.url.path == "/v1/models":
            data = [
                {"id": m, "object": "model"} for m in (models if models is not None else ["qwen"])
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        if request.url.path == "/metrics":
            return httpx.Response(metrics, text=METRICS)
        return httpx.Response(404)

    return handler


async def test_ready_when_healthy_and_listed() -> None:
    probe = _probe(_engine())
    assert (await probe.readiness()).ok
    assert (await probe.health()).ok


async def test_not_ready_when_model_missing_or_unhealthy() -> None:
    missing = await _probe(_engine(models=["other"])).readiness()
    assert not missing.ok
    assert "'qwen' not listed" in missing.detail
    unhealthy = await _probe(_engine(health=503)).readiness()
    assert not unhealthy.ok
    assert unhealthy.detail == "/health: 503"
    health = await _probe(_engine(health=503)).health()
    assert health.detail == "503"


async def test_connection_errors_are_results_not_exceptions() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    probe = _probe(refuse)
    assert (await probe.health()).detail == "connection refused"
    assert not (await probe.readiness()).ok
    assert await probe.load() is None


async def test_load_parsed_and_failed_scrape_is_unknown() -> None:
    load = await _probe(_engine()).load()
    assert load is not None
    assert (load.running, load.waiting) == (3, 1)
    assert load.kv_cache_usage == pytest.approx(0.25)
    assert await _probe(_engine(metrics=500)).load() is None


async def test_no_answer_is_timed_out_and_an_error_status_is_not() -> None:
    seen: list[float | None] = []

    def hang(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        raise httpx.ReadTimeout("no answer", request=request)

    hung = await _probe(hang).health(0.7)
    assert (hung.ok, hung.detail, hung.timed_out) == (False, "timed out", True)
    assert seen == [0.7]  # the round's deadline, not the probe's own 1 s
    assert await _probe(hang).load(0.4) is None
    assert seen[-1] == 0.4
    failing = await _probe(_engine(health=503)).health()
    assert (failing.ok, failing.timed_out) == (False, False)


async def test_only_200_is_healthy_and_other_failures_are_named() -> None:
    accepted = await _probe(lambda request: httpx.Response(204)).health()
    assert (accepted.ok, accepted.detail) == (False, "204")

    def cut(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected", request=request)

    dropped = await _probe(cut).health()
    assert (dropped.ok, dropped.detail, dropped.timed_out) == (False, "RemoteProtocolError", False)
    assert (await _probe(cut).readiness()).detail == "/health: RemoteProtocolError"
