"""Schemathesis against the gateway's, the coordinator's and the agent's HTTP APIs, in process.

Each app's own served document (``/schema/openapi.json``, written from the endpoint
catalog) drives schemathesis, which generates valid and invalid requests from it.
Checks: no 5xx, every status and content type the app answers is documented, every
body matches its documented schema (errors included: OpenAI-shaped), malformed JSON is
400 and a wrong shape 4xx. The document is used as served: a violation is a lie in it.

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

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.coordinator import (
    CoordinatorSettings,
    create_coordinator_app,
)
from sage.unified.gateway.app import create_gateway_app
from sage.unified.gateway.settings import GatewaySettings

EXAMPLES = int(os.environ.get("SAGE_FUZZ_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=EXAMPLES <= 100,  # `make test` is reproducible; `make fuzz` explores
    suppress_health_check=list(HealthCheck),
)

Document = dict[str, Any]


def _served_document(app: Any) -> Document:
    """The document ``app`` serves at ``/schema/openapi.json``, as any client gets it."""
    with schemathesis_asgi.get_client(app) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    document: Document = response.json()
    return document


def _openai_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every non-2xx answer is ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    if response.headers.get("content-type", [""])[0].startswith("text/html"):
        return None  # Studio's pages answer as pages (documented so)
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), dict), body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str)
    return True


def _no_5xx_but_upstream(ctx: Any, response: Any, case: Any) -> bool | None:
    """The gateway's only 5xx are about engines it proxies to (none here): 502/503/504."""
    assert response.status_code < 500 or response.status_code in (502, 503, 504), (
        response.status_code,
        response.text,
    )
    return True


def _fuzz(schema: Any, *, server_error: Any = not_a_server_error) -> None:
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
                checks=[
                    server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                    _openai_error_body,
                ],
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
        max_watch_s=1,  # a fuzzed long-poll (wait=56) ends within the client's timeout
        # The in-process test client calls itself "testserver".
        allowed_hosts=["testserver"],
    )


@pytest.fixture(scope="module")
def coordinator_schema() -> Iterator[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_coordinator_app(_coordinator_settings(Path(tmp)))
        schema = schemathesis.openapi.from_dict(_served_document(app))
        schema.app = app
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
        served = _WithAgent(Agent(_agent_settings(Path(tmp)), launch_process=_refuse_launch))
        schema = schemathesis.openapi.from_dict(_served_document(served.app))
        schema.app = served
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
    # Found by the fuzzer (was a 500): "¹" is a digit to str.isdigit(), not to int().
    for index in ("%C2%B9", "%D9%A3", "-1"):
        response = _raw(agent_schema, "POST", f"/v1/gpus/{index}/clear", b"")
        assert response.status_code == 404, (index, response.text)  # no such GPU
        assert response.json()["error"]["type"] == "not_found_error"


def test_coordinator_gpu_index_must_be_an_ascii_number(coordinator_schema: Any) -> None:
    # Found by the fuzzer (was a 500): "¹" is a digit to str.isdigit(), not to int().
    for index in ("%C2%B9", "%D9%A3"):
        path = f"/v1/management/agents/a1/gpus/{index}/clear"
        response = _raw(coordinator_schema, "POST", path, b"")
        assert response.status_code == 422, (index, response.text)


# --------------------------------------------------------------------------- gateway
def _gateway_settings(tmp: Path) -> GatewaySettings:
    # Static mode: the OpenAI routes in front of one engine that is never there (the
    # proxy's own answers: 400, 404, 413, 503), sessions, and the static backend table.
    return GatewaySettings(
        sage_home=tmp,
        backends=["http://127.0.0.1:9"],
        allowed_hosts=["testserver"],
        static_refresh_s=60,
    )


@pytest.fixture(scope="module")
def gateway_schema() -> Iterator[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_gateway_app(_gateway_settings(Path(tmp)))
        schema = schemathesis.openapi.from_dict(_served_document(app))
        schema.app = app
        try:
            yield schema
        finally:
            schemathesis_asgi.shutdown_lifespans()


def test_gateway_api_fuzz(gateway_schema: Any) -> None:
    _fuzz(gateway_schema, server_error=_no_5xx_but_upstream)
