"""Every component's ``/metrics`` sends one well-formed Content-Type (Prometheus 3 refuses
a scrape whose media type it cannot parse; the charset used to be sent twice)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.coordinator import CoordinatorSettings, create_coordinator_app
from sage.unified.gateway.app import create_gateway_app
from sage.unified.gateway.settings import GatewaySettings

pytestmark = pytest.mark.anyio


def strict_media_type(value: str) -> tuple[str, dict[str, str]]:
    """RFC 9110 §8.3.1 ``type/subtype *( OWS ";" OWS parameter )``, no parameter twice."""
    kind, *parameters = (part.strip() for part in value.split(";"))
    assert kind.count("/") == 1, value
    seen: dict[str, str] = {}
    for parameter in parameters:
        name, equals, parameter_value = parameter.partition("=")
        assert equals == "=", value
        assert name, value
        assert parameter_value, value
        assert name.lower() not in seen, f"parameter {name!r} twice in {value!r}"
        seen[name.lower()] = parameter_value
    return kind.lower(), seen


def _agent(tmp: Path) -> Litestar:
    return create_agent_app(Agent(AgentSettings(sage_home=tmp, coordinator_url=None)))


def _coordinator(tmp: Path) -> Litestar:
    return create_coordinator_app(CoordinatorSettings(db_path=None))


def _gateway(tmp: Path) -> Litestar:
    return create_gateway_app(GatewaySettings(sage_home=tmp, backends=["http://127.0.0.1:9"]))


@pytest.mark.parametrize("make_app", [_agent, _coordinator, _gateway])
async def test_metrics_content_type_is_strictly_valid(
    make_app: Callable[[Path], Litestar], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    kind, parameters = strict_media_type(response.headers["content-type"])
    assert kind == "text/plain"
    assert parameters["charset"] == "utf-8"
    assert parameters["version"] in ("0.0.4", "1.0.0")
