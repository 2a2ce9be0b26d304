"""Deployments, rollouts, cordon, drain and GPU clear through the coordinator's HTTP routes,
with the reconciler's loop running and fake agents behind an httpx MockTransport."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from sage.unified.coordinator import (
    Coordinator,
    CoordinatorSettings,
    MemoryStore,
    create_coordinator_app,
)
from sage.unified.sdk.clock import FakeClock
from sage.unified.sdk.models import (
    AgentReport,
    EngineInfo,
    EngineSpec,
    GpuInfo,
    decode,
    encode,
)
from sage.unified.sdk.states import EngineState

ADMIN = {"authorization": "Bearer admin-t"}
AGENT = {"authorization": "Bearer agent-t", "content-type": "application/json"}
HOSTS = {"a1": "10.0.0.5", "a2": "10.0.0.6"}


class FakeAgents:
    """The agents' API: records commands and keeps each host's engines."""

    def __init__(self) -> None:
        self.engines: dict[str, dict[str, EngineInfo]] = {a: {} for a in HOSTS}
        self.calls: list[tuple[str, str, str]] = []
        self._ports = itertools.count(8900)

    def agent_of(self, host: str) -> str:
        return next(a for a, h in HOSTS.items() if h == host)

    def handle(self, request: httpx.Request) -> httpx.Response:
        agent = self.agent_of(request.url.host)
        path = request.url.path
        self.calls.append((agent, request.method, path))
        if request.method == "POST" and path == "/v1/engines":
            spec = decode(request.content, EngineSpec)
            port = next(self._ports)
            info = EngineInfo(
                id=f"{spec.name}-{port}",
                model=spec.name,
                runtime=spec.runtime,
                host=HOSTS[agent],
                port=port,
                url=f"http://{HOSTS[agent]}:{port}",
                state=EngineState.STARTING,
                created_at=1_700_000_000.0,
                state_changed_at=1_700_000_000.0,
                spec=spec,
            )
            self.engines[agent][info.id] = info
            return httpx.Response(201, content=encode(info))
        if path.startswith("/v1/gpus/"):
            index = int(path.split("/")[3])
            return httpx.Response(200, content=encode(GpuInfo(index=index, healthy=True)))
        engine_id = path.split("/")[3]
        info = self.engines[agent][engine_id]
        state = EngineState.DRAINING if path.endswith("/drain") else EngineState.STOPPED
        info = msgspec.structs.replace(info, state=state)
        self.engines[agent][engine_id] = info
        return httpx.Response(202 if state is EngineState.DRAINING else 200, content=encode(info))

    def set_all(self, state: EngineState, agent: str | None = None) -> None:
        for name, engines in self.engines.items():
            if agent in (None, name):
                for engine_id, info in engines.items():
                    if info.state is EngineState.STARTING:
                        engines[engine_id] = msgspec.structs.replace(info, state=state)

    def report(self, agent: str) -> bytes:
        return encode(
            AgentReport(
                agent_id=agent,
                host=HOSTS[agent],
                url=f"http://{HOSTS[agent]}:8200",
                incarnation=1,
                engines=list(self.engines[agent].values()),
                labels={"zone": agent},
            )
        )

    def starts(self, agent: str | None = None) -> int:
        return sum(
            1 for a, m, p in self.calls if m == "POST" and p == "/v1/engines" and agent in (None, a)
        )


class Env:
    def __init__(self, client: httpx.AsyncClient, agents: FakeAgents, coordinator: Coordinator):
        self.client = client
        self.agents = agents
        self.coordinator = coordinator

    async def report(self, *agents: str) -> None:
        for agent in agents or tuple(HOSTS):
            r = await self.client.put(
                f"/v1/agents/{agent}",
                content=self.agents.report(agent),
                headers={**AGENT, "content-type": "application/json"},
            )
            assert r.status_code == 200, r.text

    async def until(self, predicate: Callable[[], Any], what: str) -> Any:
        for _ in range(500):
            if value := predicate():
                return value
            await anyio.sleep(0.02)
        raise AssertionError(f"not within 10 s: {what}")

    async def get(self, path: str) -> Any:
        r = await self.client.get(f"/v1/management{path}", headers=ADMIN)
        assert r.status_code == 200, r.text
        return r.json()


async def fake_resolver(host: str, port: int) -> list[str]:
    return [host]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    agents = FakeAgents()
    settings = CoordinatorSettings(
        admin_tokens=["admin-t"],
        agent_tokens=["agent-t"],
        db_path=None,
        reconcile_interval_s=0.05,
        probe_interval_s=30,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(agents.handle)) as http:
        coordinator = Coordinator(
            settings,
            clock=FakeClock(),
            store=MemoryStore(),
            http_client=http,
            resolver=fake_resolver,
        )
        app = create_coordinator_app(coordinator=coordinator)
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://coord.localhost"
            ) as client:
                yield Env(client, agents, coordinator)


CHAT = {"name": "chat", "engine": {"model": "m", "runtime": "simulated"}, "replicas": 4}


@pytest.mark.anyio
async def test_apply_starts_replicas_spread_and_reports_ready(env: Env) -> None:
    await env.report()
    r = await env.client.put("/v1/management/deployments/chat", json=CHAT, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["status"]["desired"] == 4
    await env.until(lambda: env.agents.starts() == 4, "4 starts")
    assert (env.agents.starts("a1"), env.agents.starts("a2")) == (2, 2)
    specs = [e.spec for engines in env.agents.engines.values() for e in engines.values()]
    assert {(s.deployment, s.deployment_revision) for s in specs if s} == {("chat", 1)}
    await anyio.sleep(0.3)
    assert env.agents.starts() == 4  # pending starts count: nothing starts twice

    env.agents.set_all(EngineState.READY)
    await env.report()
    status = (await env.get("/deployments/chat"))["status"]
    assert (status["ready"], status["updated"], status["unavailable"]) == (4, 4, 0)
    assert status["rollout"]["state"] == "complete"
    for _ in range(100):
        audit = await env.get("/audit?limit=50")
        if any(e["action"] == "deployment.rollout" for e in audit["entries"]):
            break
        await anyio.sleep(0.02)
    (recorded,) = [e for e in audit["entries"] if e["action"] == "deployment.rollout"]
    assert recorded["result"] == "complete: revision 1"
    again = await env.client.put("/v1/management/deployments/chat", json=CHAT, headers=ADMIN)
    assert again.json()["status"]["revision"] == 1  # idempotent
    audit = await env.get("/audit?limit=50")
    assert [e["who"] for e in audit["entries"] if e["action"] == "engine.start"] == [
        "reconciler"
    ] * 4


@pytest.mark.anyio
async def test_plan_is_a_dry_run_of_a_rolling_update(env: Env) -> None:
    await env.report()
    await env.client.put("/v1/management/deployments/chat", json=CHAT, headers=ADMIN)
    await env.until(lambda: env.agents.starts() == 4, "4 starts")
    env.agents.set_all(EngineState.READY)
    await env.report()
    new = {**CHAT, "engine": {"model": "m", "runtime": "simulated", "max_num_seqs": 8}}
    r = await env.client.post(
        "/v1/management/deployments/plan", json={"deployments": [new]}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    (entry,) = r.json()["entries"]
    assert (entry["change"], entry["revision_from"], entry["revision_to"]) == ("update", 1, 2)
    assert (entry["start"], entry["replace"]) == (4, 4)
    assert [a["action"] for a in entry["actions"]] == ["start"]  # surge 1, then waits
    await anyio.sleep(0.2)
    assert env.agents.starts() == 4  # a dry run starts nothing
    deployment = await env.get("/deployments/chat")
    assert deployment["status"]["revision"] == 1


@pytest.mark.anyio
async def test_rolling_update_then_undo(env: Env) -> None:
    await env.report()
    await env.client.put(
        "/v1/management/deployments/chat", json={**CHAT, "replicas": 1}, headers=ADMIN
    )
    await env.until(lambda: env.agents.starts() == 1, "first replica")
    env.agents.set_all(EngineState.READY)
    await env.report()
    new = {**CHAT, "replicas": 1, "engine": {"model": "m", "runtime": "simulated", "dtype": "half"}}
    r = await env.client.put("/v1/management/deployments/chat", json=new, headers=ADMIN)
    assert r.json()["status"]["revision"] == 2
    await env.until(lambda: env.agents.starts() == 2, "the new replica")
    assert env.agents.calls[-1][1:] == ("POST", "/v1/engines")  # no drain before it is READY
    env.agents.set_all(EngineState.READY)
    await env.report()
    await env.until(
        lambda: any(p.endswith("/drain") for _, m, p in env.agents.calls), "the old one drains"
    )
    rollout = await env.get("/deployments/chat/rollout")
    assert rollout["revision"] == 2
    r = await env.client.post(
        "/v1/management/deployments/chat/rollout/undo", json={}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"]["revision"] == 3
    assert r.json()["spec"]["engine"].get("dtype") is None
    bad = await env.client.post(
        "/v1/management/deployments/chat/rollout/undo", json={"to_revision": 9}, headers=ADMIN
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "no_revision"


@pytest.mark.anyio
async def test_cordon_drain_and_uncordon(env: Env) -> None:
    await env.report()
    # An engine of no deployment on a2, to be drained with the host.
    r = await env.client.post(
        "/v1/management/engines/start",
        json={"spec": {"model": "solo", "runtime": "simulated"}, "host": "a2"},
        headers=ADMIN,
    )
    assert r.status_code == 202, r.text
    await env.client.put(
        "/v1/management/deployments/chat", json={**CHAT, "replicas": 2}, headers=ADMIN
    )
    await env.until(lambda: env.agents.starts() == 3, "two replicas and the solo engine")
    env.agents.set_all(EngineState.READY)
    await env.report()

    cordoned = await env.client.post("/v1/management/agents/10.0.0.6/cordon", headers=ADMIN)
    assert cordoned.json()["cordoned"] is True  # by address
    refused = await env.client.post(
        "/v1/management/engines/start",
        json={"spec": {"model": "x", "runtime": "simulated"}, "host": "a2"},
        headers=ADMIN,
    )
    assert refused.status_code == 409
    assert "cordoned" in refused.json()["error"]["message"]

    drain = await env.client.post("/v1/management/agents/a2/drain", headers=ADMIN)
    body = drain.json()
    assert (len(body["drained"]), len(body["moving"])) == (1, 1)
    assert body["drained"][0].startswith("solo")
    await env.until(lambda: env.agents.starts("a1") == 2, "a replacement on a1")
    agents = {a["agent_id"]: a for a in (await env.get("/agents"))["agents"]}
    assert (agents["a2"]["cordoned"], agents["a2"]["draining"]) == (True, True)
    assert agents["a1"]["labels"] == {"zone": "a1"}

    await env.client.post("/v1/management/agents/a2/uncordon", headers=ADMIN)
    agents = {a["agent_id"]: a for a in (await env.get("/agents"))["agents"]}
    assert agents["a2"]["cordoned"] is False
    missing = await env.client.post("/v1/management/agents/nope/cordon", headers=ADMIN)
    assert missing.status_code == 404


@pytest.mark.anyio
async def test_impossible_placement_is_reported_per_host(env: Env) -> None:
    await env.report()
    spec = {**CHAT, "placement": {"labels": {"zone": "moon"}}}
    await env.client.put("/v1/management/deployments/chat", json=spec, headers=ADMIN)
    status = (await env.get("/deployments/chat"))["status"]
    (condition,) = [c for c in status["conditions"] if c["reason"] == "no_placement"]
    assert condition["hosts"] == {"a1": "lacks label zone=moon", "a2": "lacks label zone=moon"}
    await anyio.sleep(0.2)
    assert env.agents.starts() == 0


@pytest.mark.anyio
async def test_delete_drains_replicas_then_forgets(env: Env) -> None:
    await env.report()
    await env.client.put(
        "/v1/management/deployments/chat", json={**CHAT, "replicas": 1}, headers=ADMIN
    )
    await env.until(lambda: env.agents.starts() == 1, "one replica")
    env.agents.set_all(EngineState.READY)
    await env.report()
    r = await env.client.delete("/v1/management/deployments/chat", headers=ADMIN)
    assert r.json()["status"]["deleting"] is True
    await env.until(lambda: any(p.endswith("/drain") for _, m, p in env.agents.calls), "drained")
    await env.report()  # the agent shows it DRAINING
    await env.until(lambda: not env.coordinator.fleet.deployments(), "forgotten")
    gone = await env.client.get("/v1/management/deployments/chat", headers=ADMIN)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "deployment_not_found"


@pytest.mark.anyio
async def test_bodies_are_checked(env: Env) -> None:
    wrong_name = await env.client.put("/v1/management/deployments/other", json=CHAT, headers=ADMIN)
    assert wrong_name.status_code == 422
    argv = {**CHAT, "engine": {"model": "m", "argv": ["--evil"]}}
    unknown = await env.client.put("/v1/management/deployments/chat", json=argv, headers=ADMIN)
    assert unknown.status_code == 422
    assert "argv" in unknown.json()["error"]["message"]
    no_token = await env.client.put(
        "/v1/management/deployments/chat",
        content=json.dumps(CHAT),
        headers={"content-type": "application/json"},
    )
    assert no_token.status_code == 401


@pytest.mark.anyio
async def test_gpu_clear_goes_through_the_agent_and_is_audited(env: Env) -> None:
    await env.report()
    r = await env.client.post("/v1/management/agents/a1/gpus/2/clear", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["index"] == 2
    assert ("a1", "POST", "/v1/gpus/2/clear") in env.agents.calls
    bad = await env.client.post("/v1/management/agents/a1/gpus/x/clear", headers=ADMIN)
    assert bad.status_code == 422
    audit = await env.get("/audit")
    assert any(e["action"] == "gpu.clear" and e["target"] == "a1:2" for e in audit["entries"])


@pytest.mark.anyio
async def test_stopped_and_long_error_engines_of_nobody_age_out_of_listings(env: Env) -> None:
    now = env.coordinator.clock.time()

    def engine(
        engine_id: str, state: EngineState, age: float, deployment: str | None
    ) -> EngineInfo:
        port = 8950 + len(env.agents.engines["a1"])
        return EngineInfo(
            id=engine_id,
            model="m",
            host=HOSTS["a1"],
            port=port,
            url=f"http://{HOSTS['a1']}:{port}",
            state=state,
            state_changed_at=now - age,
            spec=EngineSpec(model="m", deployment=deployment, deployment_revision=1)
            if deployment
            else EngineSpec(model="m"),
        )

    for info in (
        engine("old-stopped", EngineState.STOPPED, 4000, None),
        engine("old-error", EngineState.ERROR, 4000, None),
        engine("new-stopped", EngineState.STOPPED, 10, None),
        engine("old-replica", EngineState.STOPPED, 4000, "chat"),
        engine("orphan-replica", EngineState.ERROR, 4000, "gone"),
        engine("serving", EngineState.READY, 4000, None),
    ):
        env.agents.engines["a1"][info.id] = info
    nowhere = {**CHAT, "replicas": 0}
    await env.client.put("/v1/management/deployments/chat", json=nowhere, headers=ADMIN)
    await env.report("a1")
    listed = {e["id"] for e in (await env.get("/engines"))["engines"]}
    assert listed == {"new-stopped", "old-replica", "serving"}
    await env.coordinator._running().intake.sweep()
    audit = (await env.get("/audit?limit=50"))["entries"]
    aged = sorted(e["target"] for e in audit if e["action"] == "engine.aged_out")
    assert aged == ["old-error", "old-stopped", "orphan-replica"]
    await env.coordinator._running().intake.sweep()  # told once
    audit = (await env.get("/audit?limit=50"))["entries"]
    assert len([e for e in audit if e["action"] == "engine.aged_out"]) == 3


@pytest.mark.anyio
async def test_a_restarted_coordinator_starts_no_replica_twice() -> None:
    agents = FakeAgents()
    store = MemoryStore()
    settings = CoordinatorSettings(
        admin_tokens=["admin-t"],
        agent_tokens=["agent-t"],
        db_path=None,
        reconcile_interval_s=0.05,
        probe_interval_s=30,
    )
    clock = FakeClock()
    async with httpx.AsyncClient(transport=httpx.MockTransport(agents.handle)) as http:

        async def coordinator_env() -> tuple[Any, Env]:
            coordinator = Coordinator(
                settings, clock=clock, store=store, http_client=http, resolver=fake_resolver
            )
            app = create_coordinator_app(coordinator=coordinator)
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://c.localhost"
            )
            return app, Env(client, agents, coordinator)

        app, env = await coordinator_env()
        async with app.lifespan(), env.client:
            await env.report()
            await env.client.put("/v1/management/deployments/chat", json=CHAT, headers=ADMIN)
            await env.until(lambda: agents.starts() == 4, "4 starts")
        # Restarted before any agent reported the new engines: the starts are pending.
        app, env = await coordinator_env()
        async with app.lifespan(), env.client:
            await anyio.sleep(0.3)
            assert agents.starts() == 4
            await env.report()
            await anyio.sleep(0.3)
            assert agents.starts() == 4
            status = (await env.get("/deployments/chat"))["status"]
            assert [r["state"] for r in status["replicas"]] == ["STARTING"] * 4
        # Restarted after the agents reported them: nothing is pending, and the registry is
        # empty until the agents report again; the reconciler waits for them (settling).
        app, env = await coordinator_env()
        async with app.lifespan(), env.client:
            await anyio.sleep(0.3)
            assert agents.starts() == 4
            status = (await env.get("/deployments/chat"))["status"]
            assert [c["reason"] for c in status["conditions"]] == ["settling"]
            await env.report()
            await anyio.sleep(0.3)
            assert agents.starts() == 4
