"""Schemathesis against the coordinator's and the agent's HTTP APIs, in process.

Both apps decode request bodies themselves (msgspec), so Litestar's generated
OpenAPI document knows no request bodies and describes errors in its own shape. The
document is completed here from the wire models (request bodies, the routing table,
the OpenAI error body for every non-2xx answer), then schemathesis generates valid
and invalid requests from it. Checks: no 5xx, every 2xx body matches its schema,
every error body is OpenAI-shaped, malformed JSON is 400 and a wrong shape 4xx.

``SAGE_FUZZ_EXAMPLES`` (default 25) bounds the examples per app and generation mode;
``make fuzz`` runs 1000.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import response_schema_conformance

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.coordinator import (
    Coordinator,
    CoordinatorSettings,
    create_agents_router,
    create_coordinator_app,
    create_management_router,
)
from sage.unified.sdk.fleet import DeploymentPlanRequest, DeploymentSpec, RolloutUndoRequest
from sage.unified.sdk.models import (
    AgentReport,
    EngineInfo,
    EngineSpec,
    EngineStartRequest,
    EngineStopRequest,
    ErrorBody,
    RegisterEngineRequest,
    RoutingTable,
)

EXAMPLES = int(os.environ.get("SAGE_FUZZ_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=EXAMPLES <= 100,  # `make test` is reproducible; `make fuzz` explores
    suppress_health_check=list(HealthCheck),
)

Document = dict[str, Any]


def _complete_document(
    document: Document,
    bodies: dict[tuple[str, str], type[Any]],
    responses: dict[tuple[str, str, str], type[Any]],
) -> Document:
    """Add request bodies and our response/error schemas to Litestar's document."""
    models = [ErrorBody, *bodies.values(), *responses.values()]
    _, components = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    error = {
        "description": "OpenAI-shaped error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            # Litestar documents its own 400 shape; every error here is ErrorBody.
            operation["responses"] = {
                code: answer
                for code, answer in operation["responses"].items()
                if code.startswith("2")
            }
            operation["responses"]["default"] = error
            model = bodies.get((method, path))
            if model is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                }
            for (r_method, r_path, code), r_model in responses.items():
                if (r_method, r_path) == (method, path):
                    operation["responses"][code] = {
                        "description": "ok",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{r_model.__name__}"}
                            }
                        },
                    }
    return document


def _openai_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every non-2xx answer is ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), dict), body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str)
    return True


def _fuzz(schema: Any) -> None:
    """``EXAMPLES`` valid and ``EXAMPLES`` invalid requests for every operation."""
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @settings(FUZZ_SETTINGS, max_examples=2 * EXAMPLES)
        @given(case=strategy)
        def run(case: Any) -> None:
            response = case.call(timeout=30)
            case.validate_response(
                response,
                checks=[not_a_server_error, response_schema_conformance, _openai_error_body],
            )

        run()


def _raw(schema: Any, method: str, path: str, body: bytes) -> Any:
    """One hand-made request through the same in-process transport."""
    with schemathesis_asgi.get_client(schema.app) as client:
        return client.request(
            method, path, data=body, headers={"content-type": "application/json"}, timeout=30
        )


# ----------------------------------------------------------------------- coordinator
def _coordinator_settings(tmp: Path) -> CoordinatorSettings:
    return CoordinatorSettings(
        db_path=tmp / "coordinator.db",
        # Fuzzed reports name arbitrary agent URLs and fuzzed registrations arbitrary
        # engines: keep every outbound call short.
        agent_timeout_s=0.5,
        probe_timeout_s=0.5,
        probe_interval_s=5,
        # The in-process test client calls itself "testserver".
        allowed_hosts=["testserver"],
    )


def _coordinator_document(tmp: Path) -> Document:
    twin = Coordinator(_coordinator_settings(tmp))
    app = Litestar(
        [
            create_management_router(twin, twin.settings.browser_policy()),
            create_agents_router(twin, twin.settings.browser_policy()),
        ],
        openapi_config=OpenAPIConfig(title="coordinator", version="1"),
    )
    management = "/v1/management"
    return _complete_document(
        app.openapi_schema.to_schema(),
        bodies={
            ("post", f"{management}/engines/register"): RegisterEngineRequest,
            ("post", f"{management}/engines/start"): EngineStartRequest,
            ("post", f"{management}/engines/stop"): EngineStopRequest,
            ("put", "/v1/agents/{agent_id}"): AgentReport,
            ("put", f"{management}/deployments/{{name}}"): DeploymentSpec,
            ("post", f"{management}/deployments/plan"): DeploymentPlanRequest,
            ("post", f"{management}/deployments/{{name}}/rollout/undo"): RolloutUndoRequest,
        },
        responses={
            ("get", f"{management}/backends", "200"): RoutingTable,
            ("get", f"{management}/engines/{{engine_id}}", "200"): EngineInfo,
            ("post", f"{management}/engines/register", "201"): EngineInfo,
            ("post", f"{management}/engines/start", "202"): EngineInfo,
            ("post", f"{management}/engines/stop", "200"): EngineInfo,
        },
    )


@pytest.fixture(scope="module")
def coordinator_schema() -> Iterator[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        schema = schemathesis.openapi.from_dict(_coordinator_document(Path(tmp)))
        schema.app = create_coordinator_app(_coordinator_settings(Path(tmp)))
        try:
            yield schema
        finally:
            schemathesis_asgi.shutdown_lifespans()


def test_coordinator_api_fuzz(coordinator_schema: Any) -> None:
    _fuzz(coordinator_schema)


def test_coordinator_malformed_bodies_and_urls_are_4xx(coordinator_schema: Any) -> None:
    for path in ("/v1/management/engines/register", "/v1/management/engines/start"):
        for body, status in ((b"{not json", 400), (b"[]", 422), (b'{"model": 7}', 422)):
            response = _raw(coordinator_schema, "POST", path, body)
            assert response.status_code == status, (path, body, response.text)
            assert set(response.json()["error"]) >= {"message", "type", "param", "code"}
    # Found by the fuzzer (were 500s): URLs urlsplit refuses, host names IDNA refuses.
    for url in ("http://[::1:80", "http://]x", "http://\u00ec]\u00e5:80"):
        body = f'{{"model": "m", "url": "{url}"}}'.encode()
        response = _raw(coordinator_schema, "POST", "/v1/management/engines/register", body)
        assert response.status_code == 422, (url, response.text)
    engine = {"id": "e", "model": "m", "host": "127.0.0.1", "port": 8900}
    for host, engine_url in (
        ("\u00ec]\u00e5", "http://127.0.0.1:8900"),
        ("127.0.0.1", "http://[127.0.0.1:8900"),
    ):
        report = {
            "agent_id": "fz",
            "host": host,
            "url": "http://127.0.0.1:1",
            "engines": [{**engine, "url": engine_url}],
        }
        body = json.dumps(report).encode()
        response = _raw(coordinator_schema, "PUT", "/v1/agents/fz", body)
        assert response.status_code == 422, (host, engine_url, response.text)


# ----------------------------------------------------------------------------- agent
def _refuse_launch(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the fuzzer got an engine launched")


def _agent_settings(tmp: Path) -> AgentSettings:
    return AgentSettings(
        sage_home=tmp,
        coordinator_url=None,
        model_allowlist=["__nothing_is_allowed__"],
        port=8299,
        allowed_hosts=["testserver"],
    )


def _agent_document(tmp: Path) -> Document:
    app = create_agent_app(Agent(_agent_settings(tmp), launch_process=_refuse_launch))
    # The same handlers on a twin app that documents them (Litestar adds OPTIONS ones).
    handlers = {
        h
        for route in app.routes
        for h in getattr(route, "route_handlers", [])
        if set(getattr(h, "http_methods", ())) != {"OPTIONS"}
    }
    twin = Litestar(
        list(handlers),
        openapi_config=OpenAPIConfig(title="agent", version="1"),
    )
    return _complete_document(
        twin.openapi_schema.to_schema(),
        bodies={("post", "/v1/engines"): EngineSpec},
        responses={("get", "/v1/engines/{engine_id}", "200"): EngineInfo},
    )


class _WithAgent:
    """The agent app with a lifespan that enters its :class:`Agent` (as the server does)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.app = create_agent_app(agent)

    async def __call__(
        self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        async with self.agent:
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


@pytest.fixture(scope="module")
def agent_schema() -> Iterator[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        schema = schemathesis.openapi.from_dict(_agent_document(Path(tmp)))
        schema.app = _WithAgent(Agent(_agent_settings(Path(tmp)), launch_process=_refuse_launch))
        try:
            yield schema
        finally:
            schemathesis_asgi.shutdown_lifespans()


def test_agent_api_fuzz(agent_schema: Any) -> None:
    _fuzz(agent_schema)
    engines = _raw(agent_schema, "GET", "/v1/engines", b"").json()
    assert engines == [] or engines.get("engines") == [], engines


def test_agent_malformed_bodies(agent_schema: Any) -> None:
    for body, status in (
        (b"{not json", 400),
        (b"[]", 422),
        (b'{"model": "m", "command": "sh"}', 422),
    ):
        response = _raw(agent_schema, "POST", "/v1/engines", body)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "param", "code"}
