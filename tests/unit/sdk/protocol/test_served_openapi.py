"""What each app says about itself is true: its OpenAPI document describes every
declared route from the catalog (bodies, answers, OpenAI-shaped errors) and ``OPTIONS``
lists every method a path serves.

The schemathesis suite (tests/fuzz/test_served_apis_fuzz.py) checks the answers against
these documents; this checks the documents say what the catalog declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.coordinator import CoordinatorSettings, create_coordinator_app
from sage.unified.gateway.app import create_gateway_app
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.protocol import AgentApi, Component, endpoints_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _agent(tmp: Path) -> Litestar:
    return create_agent_app(Agent(AgentSettings(sage_home=tmp, coordinator_url=None)))


def _coordinator(tmp: Path) -> Litestar:
    return create_coordinator_app(CoordinatorSettings(db_path=None))


def _gateway(tmp: Path) -> Litestar:
    return create_gateway_app(GatewaySettings(sage_home=tmp))


async def _get(app: Litestar, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.request(method, path)


async def _document(app: Litestar) -> dict[str, Any]:
    response = await _get(app, "GET", "/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


@pytest.mark.parametrize(
    ("make_app", "path", "allowed"),
    [
        (_agent, "/v1/engines", "GET, OPTIONS, POST"),
        (_agent, "/v1/engines/e1", "DELETE, GET, OPTIONS"),
        (_coordinator, "/v1/management/deployments/d1", "DELETE, GET, OPTIONS, PUT"),
    ],
)
async def test_options_lists_every_method_of_the_path(
    make_app: Any, path: str, allowed: str, tmp_path: Path
) -> None:
    # Litestar 2 listed only the method of the first handler registered on a path.
    response = await _get(make_app(tmp_path), "OPTIONS", path)
    assert response.status_code == 204
    assert response.headers["allow"] == allowed


@pytest.mark.parametrize(
    ("make_app", "component"),
    [(_agent, Component.AGENT), (_coordinator, Component.CONTROL_PLANE)],
)
async def test_every_declared_route_is_documented_with_openai_errors(
    make_app: Any, component: Component, tmp_path: Path
) -> None:
    document = await _document(make_app(tmp_path))
    operations = {
        operation["operationId"]: operation
        for item in document["paths"].values()
        for operation in item.values()
    }
    for endpoint in endpoints_of(component):
        operation = operations[endpoint.name]
        responses = operation["responses"]
        assert str(endpoint.status) in responses, endpoint.name
        errors = [code for code in responses if not code.startswith("2")]
        if endpoint.scope.value != "public":
            assert "401" in errors, endpoint.name
        for code in errors:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (endpoint.name, code)
        if endpoint.request is not None:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert body == {"$ref": f"#/components/schemas/{endpoint.request.__name__}"}
            assert {"400", "413", "422"} <= set(errors), endpoint.name


async def test_the_agent_documents_its_launch_body_and_browser_refusals(tmp_path: Path) -> None:
    document = await _document(_agent(tmp_path))
    start = document["paths"][AgentApi.START_ENGINE.path]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EngineSpec"
    }
    assert {"403", "409", "415"} <= set(start["responses"])
    assert "EngineSpec" in document["components"]["schemas"]


async def test_the_gateway_documents_its_openai_routes(tmp_path: Path) -> None:
    document = await _document(_gateway(tmp_path))
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "401", "404", "413", "502", "503", "508"} <= set(chat["responses"])
    transcription = document["paths"]["/v1/audio/transcriptions"]["post"]
    assert set(transcription["requestBody"]["content"]) == {"multipart/form-data"}
    table = document["paths"]["/v1/management/backends"]["get"]["responses"]["200"]
    assert table["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RoutingTable"
    }
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]
    assert set(metrics["content"]) == {"text/plain"}
