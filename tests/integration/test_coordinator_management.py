"""Management start/stop against a fake agent HTTP server that records the calls."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sage.unified.coordinator import (
    Coordinator,
    CoordinatorSettings,
    MemoryStore,
    create_coordinator_app,
)
from sage.unified.sdk.models import AgentReport, EngineInfo, GpuInfo, encode
from sage.unified.sdk.states import EngineState

ADMIN = {"authorization": "Bearer admin-t"}
AGENT = {"authorization": "Bearer agent-t"}
JSON = {"content-type": "application/json"}
GiB = 1024**3


class FakeAgent:
    """Answers the agent API contract and records (method, path, auth, body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, Any]] = []
        self.status = 201
        calls = self.calls
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                calls.append((method, self.path, self.headers.get("authorization"), body))
                if agent.status >= 400:
                    payload = {
                        "error": {
                            "message": "model not in allowlist",
                            "type": "invalid_request_error",
                        }
                    }
                    status = agent.status
                elif method == "POST" and self.path == "/v1/engines":
                    payload = {
                        "id": "new-engine",
                        "model": body["model"],
                        "host": "127.0.0.1",
                        "port": 8905,
                        "url": "http://127.0.0.1:8905",
                        "state": "STARTING",
                        "agent_id": "a1",
                    }
                    status = 201
                else:
                    engine_id = self.path.split("/")[3].split("?")[0]
                    state = "DRAINING" if "drain" in self.path else "STOPPED"
                    payload = {"id": engine_id, "model": "m", "state": state, "agent_id": "a1"}
                    status = 200
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._answer("POST")

            def do_DELETE(self) -> None:
                self._answer("DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    with FakeAgent() as agent:
        yield agent


@pytest.fixture
def coordinator() -> Coordinator:
    settings = CoordinatorSettings(
        admin_tokens=["admin-t"], agent_tokens=["agent-t"], db_path=None, agent_timeout_s=5
    )
    return Coordinator(settings, store=MemoryStore())


@pytest.fixture
async def client(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    app = create_coordinator_app(coordinator=coordinator)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://coord.localhost") as c,
    ):
        yield c


async def report(
    client: httpx.AsyncClient, agent_id: str, agent_url: str, free_gib: float, engines: int = 0
) -> None:
    body = AgentReport(
        agent_id=agent_id,
        host="127.0.0.1",
        url=agent_url,
        incarnation=1,
        gpus=[GpuInfo(index=0, memory_total_bytes=80 * GiB, memory_free_bytes=int(free_gib * GiB))],
        engines=[
            EngineInfo(
                id=f"{agent_id}-e{i}",
                model="m",
                host="127.0.0.1",
                port=8900 + i,
                url=f"http://127.0.0.1:{8900 + i}",
                state=EngineState.READY,
            )
            for i in range(engines)
        ],
    )
    r = await client.put(f"/v1/agents/{agent_id}", content=encode(body), headers={**AGENT, **JSON})
    assert r.status_code == 200, r.text


@pytest.mark.anyio
async def test_start_goes_to_agent_with_most_free_memory(
    client: httpx.AsyncClient, fake_agent: FakeAgent, coordinator: Coordinator
) -> None:
    await report(client, "a1", fake_agent.url, free_gib=79)
    await report(client, "a2", "http://127.0.0.1:1", free_gib=30)
    spec = {"model": "Qwen/Qwen2.5-0.5B", "gpu_memory_utilization": 0.3}
    r = await client.post("/v1/management/engines/start", json={"spec": spec}, headers=ADMIN)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == "new-engine"
    assert r.json()["state"] == "STARTING"
    method, path, auth, body = fake_agent.calls[0]
    assert (method, path, auth) == ("POST", "/v1/engines", "Bearer agent-t")
    assert body["model"] == "Qwen/Qwen2.5-0.5B"
    audit = (await client.get("/v1/management/audit", headers=ADMIN)).json()["entries"]
    assert audit[0]["action"] == "engine.start"
    assert audit[0]["result"].startswith("ok")
    # The start request is kept until the agent reports the engine.
    assert [r.engine_id for r in coordinator.pending_starts()] == ["new-engine"]
    snapshot = AgentReport(
        agent_id="a1",
        host="127.0.0.1",
        url=fake_agent.url,
        incarnation=1,
        engines=[
            EngineInfo(
                id="new-engine", model="m", host="127.0.0.1", port=8905, url="http://127.0.0.1:8905"
            )
        ],
    )
    await client.put("/v1/agents/a1", content=encode(snapshot), headers={**AGENT, **JSON})
    assert coordinator.pending_starts() == []


@pytest.mark.anyio
async def test_start_on_named_unreachable_agent_is_502(
    client: httpx.AsyncClient, fake_agent: FakeAgent
) -> None:
    await report(client, "a1", fake_agent.url, free_gib=79)
    await report(client, "a2", "http://127.0.0.1:1", free_gib=79)
    r = await client.post(
        "/v1/management/engines/start",
        json={"spec": {"model": "m", "runtime": "simulated"}, "host": "a2"},
        headers=ADMIN,
    )
    assert r.status_code == 502
    assert "http://127.0.0.1:1" in r.json()["error"]["message"]
    assert fake_agent.calls == []


@pytest.mark.anyio
async def test_start_nothing_fits_is_409(client: httpx.AsyncClient, fake_agent: FakeAgent) -> None:
    await report(client, "a1", fake_agent.url, free_gib=10)
    r = await client.post(
        "/v1/management/engines/start", json={"spec": {"model": "m"}}, headers=ADMIN
    )
    assert r.status_code == 409
    assert "a1:" in r.json()["error"]["message"]
    assert fake_agent.calls == []


@pytest.mark.anyio
async def test_agent_refusal_passes_through(
    client: httpx.AsyncClient, fake_agent: FakeAgent
) -> None:
    await report(client, "a1", fake_agent.url, free_gib=79)
    fake_agent.status = 422
    r = await client.post(
        "/v1/management/engines/start",
        json={"spec": {"model": "m", "runtime": "simulated"}},
        headers=ADMIN,
    )
    assert r.status_code == 422
    assert "allowlist" in r.json()["error"]["message"]


@pytest.mark.anyio
async def test_stop_drain_and_delete(client: httpx.AsyncClient, fake_agent: FakeAgent) -> None:
    await report(client, "a1", fake_agent.url, free_gib=79, engines=2)
    r = await client.post("/v1/management/engines/stop", json={"engine_id": "a1-e0"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "DRAINING"
    r = await client.post(
        "/v1/management/engines/stop", json={"engine_id": "a1-e1", "drain": False}, headers=ADMIN
    )
    assert r.json()["state"] == "STOPPED"
    assert [(m, p, a) for m, p, a, _ in fake_agent.calls] == [
        ("POST", "/v1/engines/a1-e0/drain?wait=false", "Bearer agent-t"),
        ("DELETE", "/v1/engines/a1-e1", "Bearer agent-t"),
    ]
    r = await client.post("/v1/management/engines/stop", json={"engine_id": "ghost"}, headers=ADMIN)
    assert r.status_code == 404
