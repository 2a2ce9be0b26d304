"""Every app serves its API description and no UI whose scripts come from a CDN (an
air-gapped head node showed a blank page)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar import Litestar

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.coordinator import CoordinatorSettings, create_coordinator_app
from sage.unified.gateway.app import create_gateway_app
from sage.unified.gateway.settings import GatewaySettings


def _apps(tmp_path: Path) -> list[Litestar]:
    agent = Agent(AgentSettings(sage_home=tmp_path, coordinator_url=None))
    return [
        create_gateway_app(GatewaySettings(sage_home=tmp_path)),
        create_coordinator_app(CoordinatorSettings(db_path=None)),
        create_agent_app(agent),
    ]


def test_only_the_json_description_is_served(tmp_path: Path) -> None:
    for app in _apps(tmp_path):
        config = app.openapi_config
        assert config is not None
        paths = {path for plugin in config.render_plugins for path in plugin.paths}
        assert paths == {"/openapi.json"}, (app, paths)


@pytest.mark.parametrize("page", ["swagger", "redoc", "rapidoc", "elements", "scalar"])
def test_no_cdn_backed_ui(tmp_path: Path, page: str) -> None:
    for app in _apps(tmp_path):
        config = app.openapi_config
        assert config is not None
        assert not any(plugin.has_path(f"/{page}") for plugin in config.render_plugins)
