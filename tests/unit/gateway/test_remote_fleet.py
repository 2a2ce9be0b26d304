"""A gateway in front of a standalone coordinator serves the fleet routes by carrying each
request to it (RemoteSession): answers and errors come back unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from sage.unified.coordinator import (
    Coordinator,
    CoordinatorSettings,
    MemoryStore,
    create_coordinator_app,
    create_management_router,
)
from sage.unified.gateway._remote_plane import RemoteControlPlane
from sage.unified.sdk.protocol import BrowserPolicy

ADMIN = {"authorization": "Bearer admin-t"}
CHAT = {"name": "chat", "engine": {"model": "m", "runtime": "simulated"}, "replicas": 2}


@pytest.fixture
async def gateway() -> AsyncIterator[httpx.AsyncClient]:
    settings = CoordinatorSettings(admin_tokens=["admin-t"], agent_tokens=["agent-t"], db_path=None)
    coordinator_app = create_coordinator_app(coordinator=Coordinator(settings, store=MemoryStore()))
    async with coordinator_app.lifespan():
        to_coordinator = httpx.AsyncClient(transport=httpx.ASGITransport(app=coordinator_app))
        async with to_coordinator:
            plane = RemoteControlPlane("http://coordinator.localhost", to_coordinator)
            app = Litestar(
                route_handlers=[create_management_router(plane, BrowserPolicy.of("127.0.0.1"))]
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gw.localhost"
            ) as client:
                yield client


@pytest.mark.anyio
async def test_deployment_routes_reach_the_coordinator(gateway: httpx.AsyncClient) -> None:
    applied = await gateway.put("/v1/management/deployments/chat", json=CHAT, headers=ADMIN)
    assert applied.status_code == 200, applied.text
    assert applied.json()["status"]["desired"] == 2
    listed = await gateway.get("/v1/management/deployments", headers=ADMIN)
    assert [d["spec"]["name"] for d in listed.json()["deployments"]] == ["chat"]
    status = await gateway.get("/v1/management/deployments/chat/rollout", headers=ADMIN)
    assert status.json()["conditions"][0]["reason"] == "no_placement"  # no agent at all
    plan = await gateway.post(
        "/v1/management/deployments/plan",
        json={"deployments": [{**CHAT, "replicas": 3}], "delete": []},
        headers=ADMIN,
    )
    assert plan.json()["entries"][0]["change"] == "scale"
    undo = await gateway.post(
        "/v1/management/deployments/chat/rollout/undo", json={}, headers=ADMIN
    )
    assert (undo.status_code, undo.json()["error"]["code"]) == (422, "no_revision")
    deleted = await gateway.delete("/v1/management/deployments/chat", headers=ADMIN)
    assert deleted.json()["status"]["deleting"] is True


@pytest.mark.anyio
async def test_host_routes_and_errors_pass_through(gateway: httpx.AsyncClient) -> None:
    for path in ("agents/gpu-9/cordon", "agents/gpu-9/drain", "agents/gpu-9/gpus/0/clear"):
        answer = await gateway.post(f"/v1/management/{path}", headers=ADMIN)
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "agent_not_found")
    wrong_name = await gateway.put("/v1/management/deployments/other", json=CHAT, headers=ADMIN)
    assert wrong_name.status_code == 422
    no_token = await gateway.get("/v1/management/deployments")
    assert no_token.status_code == 401  # the coordinator checks the caller's own token
