"""``/v1/management/routing/*`` and the ledger's metrics, answered by the gateway itself."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from sage.unified.gateway.app import GatewayRuntime, create_gateway_app
from sage.unified.gateway.routing import RoutingRequest
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.client import AsyncGatewayManagementClient

pytestmark = pytest.mark.anyio


def gateway(tmp_path: Path, **settings: object) -> tuple[Litestar, GatewayRuntime]:
    app = create_gateway_app(
        GatewaySettings(
            backends=["http://127.0.0.1:9"],
            sage_home=tmp_path,
            routing_policy="cache_aware",
            **settings,  # type: ignore[arg-type]
        )
    )
    runtime: GatewayRuntime = app.state.runtime
    for engine, delivered in (("static-0-llm", 600), ("static-1-llm", 0)):
        request = RoutingRequest("m", b"/v1/chat/completions", b"{}", request_id=b"r")
        request.reason = "prefix"
        request.prompt_units = 4000
        request.available_units = request.captured_units = 2400
        request.usage = (1000, delivered)
        runtime.ledger.record(request, engine, 200)
    return app, runtime


async def test_decisions_and_stats_through_the_sdk(tmp_path: Path) -> None:
    app, _ = gateway(tmp_path)
    async with AsyncGatewayManagementClient(
        "http://gw.localhost", transport=httpx.ASGITransport(app=app)
    ) as client:
        decisions = await client.routing_decisions(model="m", engine="static-0-llm")
        assert [(d.engine_id, d.delivered_tokens, d.captured_tokens) for d in decisions] == [
            ("static-0-llm", 600, 600)
        ]
        assert await client.routing_decisions(model="other") == []
        assert len(await client.routing_decisions(limit=1)) == 1
        stats = await client.routing_stats()
    assert stats.policy == "cache_aware"
    assert stats.index_keys == 0
    assert stats.index_engines == 0
    (model,) = stats.models
    assert model.model == "m"
    assert model.total.requests == 2
    assert (model.total.captured_tokens, model.total.delivered_tokens) == (1200, 600)
    assert model.total.delivery_ratio == 0.5
    assert model.engines["static-0-llm"].hit_rate == 0.6
    assert model.total.reasons == {"prefix": 2}
    assert model.recent.requests == 2
    assert set(stats.signal_help) >= {"capture_low", "delivery_low", "index_cold"}


async def test_the_routes_need_the_admin_token_when_one_is_set(tmp_path: Path) -> None:
    app, _ = gateway(tmp_path, admin_tokens=["adm"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.localhost") as client:
        for path in ("/v1/management/routing/decisions", "/v1/management/routing/stats"):
            refused = await client.get(path)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key" or refused.json()["error"]
            wrong = await client.get(path, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await client.get(path, headers={"authorization": "Bearer adm"})
            assert ok.status_code == 200


async def test_the_ledger_is_in_the_metrics(tmp_path: Path) -> None:
    app, _ = gateway(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.localhost") as client:
        text = (await client.get("/metrics")).text
    assert (
        'sage_gateway_routing_delivered_tokens_total{backend="static-0-llm",model="m"} 600.0'
        in text
    )
    assert (
        'sage_gateway_routing_decisions_total{backend="static-1-llm",model="m",reason="prefix"} 1.0'
        in text
    )
    assert 'sage_gateway_routing_recent_delivery_ratio{model="m"} 0.5' in text
    assert 'sage_gateway_routing_signal{model="m",signal="delivery_low"} 0.0' in text
    assert "sage_gateway_routing_index_keys 0.0" in text
