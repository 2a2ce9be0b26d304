"""Every declared endpoint is served by its component, and every served route is declared.

The protocol (``sage.unified.sdk.protocol``) is the one place paths, methods and types are
written; these tests build each server's real Litestar app and compare its routes with
the declarations, so a route added without a declaration (or a declaration nobody
serves) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.coordinator import CoordinatorSettings, create_coordinator_app
from sage.unified.gateway.app import create_gateway_app
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.protocol import (
    ENDPOINTS,
    AgentApi,
    Component,
    ControlPlaneApi,
    Endpoint,
    Retry,
    endpoints_of,
)

Route = tuple[str, str]


def _plain(path: str) -> str:
    """``{name:type}`` → ``{name}``: routes compare by shape, not by parameter type."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def served(app: Litestar) -> set[Route]:
    """``(method, path)`` of every route but Litestar's own (OPTIONS, HEAD, /schema)."""
    routes: set[Route] = set()
    for route in app.routes:
        if route.path.startswith("/schema"):
            continue
        path = _plain(route.path)
        methods = getattr(route, "methods", None) or {"*"}
        routes.update((m, path) for m in methods if m not in {"OPTIONS", "HEAD"})
    return routes


def declared(endpoints: tuple[Endpoint[Any, Any], ...]) -> set[Route]:
    return {(e.method, _plain(e.path)) for e in endpoints}


def asgi_routes(routes: set[Route]) -> set[Route]:
    # The OpenAI routes are ASGI handlers (every method reaches them; they answer 405
    # themselves): compare their paths as POST routes.
    return {("POST", path) if method == "*" else (method, path) for method, path in routes}


def test_coordinator_serves_exactly_the_control_plane() -> None:
    app = create_coordinator_app(CoordinatorSettings(db_path=None))
    assert served(app) == declared(endpoints_of(Component.CONTROL_PLANE))


def test_agent_serves_exactly_the_agent_api(tmp_path: Path) -> None:
    agent = Agent(AgentSettings(sage_home=tmp_path, coordinator_url=None, agent_id="a"))
    assert served(create_agent_app(agent)) == declared(endpoints_of(Component.AGENT))


def _control_plane_api() -> set[Route]:
    # The gateway serves its own /health, /readyz and /metrics instead of the
    # standalone coordinator's.
    return {r for r in declared(endpoints_of(Component.CONTROL_PLANE)) if r[1].startswith("/v1/")}


def test_embedded_gateway_serves_the_gateway_and_control_plane_apis(tmp_path: Path) -> None:
    app = create_gateway_app(GatewaySettings(sage_home=tmp_path))
    expected = declared(endpoints_of(Component.GATEWAY)) | _control_plane_api()
    assert asgi_routes(served(app)) == expected


def test_remote_gateway_serves_the_management_api_but_not_reports(tmp_path: Path) -> None:
    app = create_gateway_app(
        GatewaySettings(sage_home=tmp_path, coordinator_url="http://127.0.0.1:9")
    )
    expected = declared(endpoints_of(Component.GATEWAY)) | (
        _control_plane_api() - declared((ControlPlaneApi.REPORT,))
    )
    assert asgi_routes(served(app)) == expected


def test_static_gateway_serves_the_table_only(tmp_path: Path) -> None:
    app = create_gateway_app(GatewaySettings(sage_home=tmp_path, backends=["http://127.0.0.1:9"]))
    expected = declared(endpoints_of(Component.GATEWAY)) | declared((ControlPlaneApi.BACKENDS,))
    assert asgi_routes(served(app)) == expected


def test_declarations_are_unique_and_well_formed() -> None:
    names = [e.name for e in ENDPOINTS]
    assert len(names) == len(set(names))
    routes = [(e.server, e.method, e.path) for e in ENDPOINTS]
    assert len(routes) == len(set(routes))
    for endpoint in ENDPOINTS:
        assert endpoint.path.startswith("/"), endpoint.name
        assert endpoint.summary, endpoint.name
        assert endpoint.name.split(".")[0] in {"gateway", "control_plane", "agent", "engine"}
        if endpoint.method in {"GET", "DELETE", "PUT"}:
            # Reads and replaces are idempotent: any client may retry them.
            assert endpoint.retry is Retry.SAFE, endpoint.name


def test_starting_things_is_never_retried_once_sent() -> None:
    for endpoint in (
        ControlPlaneApi.START_ENGINE,
        ControlPlaneApi.REGISTER_ENGINE,
        AgentApi.START_ENGINE,
    ):
        assert endpoint.retry is Retry.UNSENT_ONLY


def test_format_path_quotes_one_segment() -> None:
    assert AgentApi.ENGINE.format_path({"engine_id": "a/b c"}) == "/v1/engines/a%2Fb%20c"
    with pytest.raises(ValueError, match="path parameters"):
        AgentApi.ENGINE.format_path({})
    with pytest.raises(ValueError, match="undeclared query"):
        AgentApi.ENGINE_LOGS.check_query({"tail": 1, "follow": True})
