"""The Coordinator and its HTTP surface in-process (ASGI transport, fake clock)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sage.unified.coordinator import (
    AuthenticationError,
    Coordinator,
    CoordinatorSettings,
    MemoryStore,
    SqliteStore,
    create_coordinator_app,
)
from sage.unified.sdk.clock import FakeClock
from sage.unified.sdk.models import (
    AgentReport,
    EngineInfo,
    RegisterEngineRequest,
    RoutingTable,
    decode,
    encode,
)
from sage.unified.sdk.states import EngineState

ADMIN = {"authorization": "Bearer admin-t"}
AGENT = {"authorization": "Bearer agent-t"}


def snapshot(*states: EngineState, incarnation: int = 1) -> dict[str, Any]:
    report = AgentReport(
        agent_id="a1",
        host="10.0.0.5",
        url="http://10.0.0.5:8200",
        incarnation=incarnation,
        engines=[
            EngineInfo(
                id=f"e{i}",
                model="m",
                host="10.0.0.5",
                port=8900 + i,
                url=f"http://10.0.0.5:{8900 + i}",
                state=s,
            )
            for i, s in enumerate(states)
        ],
    )
    return {"content": encode(report), "headers": {**AGENT, "content-type": "application/json"}}


async def fake_resolver(host: str, port: int) -> list[str]:
    table = {"metadata.google.internal": ["169.254.169.254"], "engine.local": ["10.1.2.3"]}
    if host in table:
        return table[host]
    if host[0].isdigit() or ":" in host:
        return [host]
    raise OSError(f"unknown host {host}")


class Env:
    def __init__(
        self,
        coordinator: Coordinator,
        client: httpx.AsyncClient,
        clock: FakeClock,
        store: MemoryStore,
    ) -> None:
        self.coordinator = coordinator
        self.client = client
        self.clock = clock
        self.store = store


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    store = MemoryStore()
    settings = CoordinatorSettings(
        admin_tokens=["admin-t"],
        agent_tokens=["agent-t"],
        db_path=None,
        sweep_interval_s=0.02,
        probe_interval_s=30,
    )
    coordinator = Coordinator(settings, clock=clock, store=store, resolver=fake_resolver)
    app = create_coordinator_app(coordinator=coordinator)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://coord.localhost"
        ) as client:
            yield Env(coordinator, client, clock, store)


@pytest.mark.anyio
async def test_requests_without_or_with_wrong_token_get_401_and_are_audited(env: Env) -> None:
    r = await env.client.get("/v1/management/engines")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    r = await env.client.put(
        "/v1/agents/a1",
        content=snapshot()["content"],
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert r.status_code == 401  # admin token is not an agent token
    log = await env.store.audit_log()
    assert len(log) == 2
    assert all(e.result.startswith("rejected") for e in log)


@pytest.mark.anyio
async def test_report_reply_and_tables(env: Env) -> None:
    r = await env.client.put("/v1/agents/a1", **snapshot(EngineState.READY, EngineState.STARTING))
    assert r.status_code == 200
    assert r.json() == {"lease_ttl_s": 10.0, "heartbeat_interval_s": 3.0, "revision": 1}
    table = decode(
        (await env.client.get("/v1/management/backends", headers=ADMIN)).content, RoutingTable
    )
    assert [b.id for b in table.backends] == ["e0"]
    engines = (await env.client.get("/v1/management/engines", headers=ADMIN)).json()
    assert engines["count"] == 2
    assert {e["id"]: e["state"] for e in engines["engines"]} == {"e0": "READY", "e1": "STARTING"}
    agents = (await env.client.get("/v1/management/agents", headers=ADMIN)).json()["agents"]
    assert agents[0]["agent_id"] == "a1"
    assert agents[0]["lost"] is False
    gpu = (await env.client.get("/v1/management/gpu", headers=ADMIN)).json()
    assert gpu == {"hosts": [{"agent_id": "a1", "host": "10.0.0.5", "gpus": [], "gpu_error": None}]}


@pytest.mark.anyio
async def test_stale_report_is_409(env: Env) -> None:
    await env.client.put("/v1/agents/a1", **snapshot(incarnation=5))
    r = await env.client.put("/v1/agents/a1", **snapshot(incarnation=4))
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "stale_incarnation"


@pytest.mark.anyio
async def test_report_for_other_agent_id_rejected(env: Env) -> None:
    r = await env.client.put("/v1/agents/someone-else", **snapshot())
    assert r.status_code == 422


@pytest.mark.anyio
async def test_body_errors(env: Env) -> None:
    r = await env.client.post(
        "/v1/management/engines/start",
        content=b"{not json",
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = await env.client.post(
        "/v1/management/engines/start", json={"spec": {"model": 5}}, headers=ADMIN
    )
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "spec.model"
    r = await env.client.post(
        "/v1/management/engines/stop", json={"engine_id": "nope"}, headers=ADMIN
    )
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    r = await env.client.get("/v1/management/backends?after=x&wait=1", headers=ADMIN)
    assert r.status_code == 422


@pytest.mark.anyio
async def test_long_poll_wakes_on_report(env: Env) -> None:
    await env.client.put("/v1/agents/a1", **snapshot(EngineState.STARTING))
    result: dict[str, Any] = {}

    async def poll() -> None:
        started = anyio.current_time()
        r = await env.client.get("/v1/management/backends?after=1&wait=10", headers=ADMIN)
        result["elapsed"] = anyio.current_time() - started
        result["table"] = r.json()

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.1)
        assert "table" not in result
        await env.client.put("/v1/agents/a1", **snapshot(EngineState.READY))
    assert result["table"]["revision"] == 2
    assert [b["id"] for b in result["table"]["backends"]] == ["e0"]
    assert result["elapsed"] < 5


@pytest.mark.anyio
async def test_long_poll_times_out_with_current_table(env: Env) -> None:
    await env.client.put("/v1/agents/a1", **snapshot(EngineState.READY))
    started = anyio.current_time()
    r = await env.client.get("/v1/management/backends?after=1&wait=0.2", headers=ADMIN)
    assert anyio.current_time() - started >= 0.19
    assert r.json()["revision"] == 1


@pytest.mark.anyio
async def test_watch_iterator_and_wait_for_change(env: Env) -> None:
    coordinator = env.coordinator
    seen: list[int] = []

    async def consume() -> None:
        async with aclosing(coordinator.watch()) as tables:
            async for table in tables:
                seen.append(table.revision)
                if table.revision >= 2:
                    return

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.05)
            await env.client.put("/v1/agents/a1", **snapshot(EngineState.STARTING))
            await anyio.sleep(0.05)
            await env.client.put("/v1/agents/a1", **snapshot(EngineState.READY))
    assert seen[0] == 0
    assert seen[-1] == 2
    table = await coordinator.wait_for_change(after=99, timeout=5)  # ahead: returns at once
    assert table.revision == 2


@pytest.mark.anyio
async def test_lease_expiry_via_sweep(env: Env) -> None:
    await env.client.put("/v1/agents/a1", **snapshot(EngineState.READY))
    env.clock.advance(10.5)
    table = await env.coordinator.wait_for_change(after=1, timeout=5)
    assert table.backends == []
    engine = (await env.client.get("/v1/management/engines/e0", headers=ADMIN)).json()
    assert engine["reason"] == "host lost"
    agents = (await env.client.get("/v1/management/agents", headers=ADMIN)).json()["agents"]
    assert agents[0]["lost"] is True


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://10.0.0.1/",
        "http://169.254.169.254/latest",
        "http://[fe80::1]:8000",
        "http://metadata.google.internal",
        "http://8.8.8.8:8000",
        "http://does-not-resolve.invalid:8000",
        # Read as octal by a C resolver (into an allowed network) but refused by the HTTP
        # client: accepted, they crashed the prober and the coordinator with it.
        "http://127.0.0.01:9/",
        "http://10.0.0.05:9/",
        "http://0177.0.0.1:9/",
        "http://127.1:9/",
    ],
)
async def test_register_rejections_are_422_and_audited(env: Env, url: str) -> None:
    r = await env.client.post(
        "/v1/management/engines/register", json={"model": "m", "url": url}, headers=ADMIN
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert env.coordinator.engines() == []
    assert env.coordinator.revision == 0
    log = await env.store.audit_log()
    assert log[0].action == "engine.register"
    assert log[0].result.startswith("rejected")


@pytest.mark.anyio
async def test_register_and_unregister(env: Env) -> None:
    r = await env.client.post(
        "/v1/management/engines/register",
        json={"model": "m", "url": "http://engine.local:8901/", "id": "r1"},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "STARTING"
    assert r.json()["url"] == "http://engine.local:8901"
    r = await env.client.post(
        "/v1/management/engines/register",
        json={"model": "m", "url": "http://127.0.0.1:8901", "id": "r1"},
        headers=ADMIN,
    )
    assert r.status_code == 409
    r = await env.client.post(
        "/v1/management/engines/stop", json={"engine_id": "r1"}, headers=ADMIN
    )
    assert r.status_code == 200
    assert r.json()["state"] == "STOPPED"
    assert env.coordinator.engines() == []


@pytest.mark.anyio
async def test_start_with_no_agent_is_409(env: Env) -> None:
    r = await env.client.post(
        "/v1/management/engines/start", json={"spec": {"model": "m"}}, headers=ADMIN
    )
    assert r.status_code == 409
    assert "no agent" in r.json()["error"]["message"]


@pytest.mark.anyio
async def test_health_readyz_metrics(env: Env) -> None:
    await env.client.put("/v1/agents/a1", **snapshot(EngineState.READY))
    assert (await env.client.get("/health")).status_code == 200
    assert (await env.client.get("/readyz")).json()["ready"] is True
    text = (await env.client.get("/metrics")).text
    assert 'sage_coordinator_engines{state="READY"} 1.0' in text
    assert "sage_coordinator_revision 1.0" in text
    assert "sage_coordinator_report_latency_seconds_count 1.0" in text
    assert (await env.client.get("/nope")).json()["error"]["type"] == "not_found_error"


@pytest.mark.anyio
async def test_revision_never_goes_back_across_restart() -> None:
    store = MemoryStore()
    settings = CoordinatorSettings(db_path=None, probe_interval_s=30)
    async with Coordinator(settings, clock=FakeClock(), store=store) as first:
        await first.report("a1", decode(snapshot(EngineState.READY)["content"], AgentReport))
        before = first.revision
        assert before == 1
    async with Coordinator(settings, clock=FakeClock(), store=store) as second:
        assert second.revision >= before
        assert (await store.open()).agents[0].agent_id == "a1"  # write-behind flushed on exit
        await second.report("a1", decode(snapshot(EngineState.STARTING)["content"], AgentReport))
        assert second.revision > before


@pytest.mark.anyio
async def test_burst_of_changes_wakes_watchers_with_latest_table() -> None:
    settings = CoordinatorSettings(db_path=None, probe_interval_s=30, watch_coalesce_s=0.05)
    async with Coordinator(settings, clock=FakeClock(), store=MemoryStore()) as coordinator:
        for state in (
            EngineState.STARTING,
            EngineState.READY,
            EngineState.STARTING,
            EngineState.READY,
        ):
            await coordinator.report("a1", decode(snapshot(state)["content"], AgentReport))
        assert coordinator.revision == 4
        with anyio.fail_after(5):
            table = await coordinator.wait_for_change(after=0, timeout=5)
            while table.revision < 4:  # at most one more coalescing window
                table = await coordinator.wait_for_change(after=table.revision, timeout=5)
        assert [b.id for b in table.backends] == ["e0"]
        assert coordinator.routing_table_json(table) is coordinator.routing_table_json(table)


@pytest.mark.anyio
async def test_an_agent_on_a_metadata_or_public_address_is_refused(env: Env) -> None:
    # The gateway sends prompts to an agent's engines, so an agent's host passes the same
    # network allow-list as a directly registered engine.
    for host in ("169.254.169.254", "8.8.8.8", "metadata.google.internal"):
        report = AgentReport(agent_id="a9", host=host, url=f"http://{host}:8200", incarnation=1)
        r = await env.client.put(
            "/v1/agents/a9",
            content=encode(report),
            headers={**AGENT, "content-type": "application/json"},
        )
        assert r.status_code == 422, (host, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert env.coordinator.agents() == []
    log = await env.store.audit_log()
    assert [e.action for e in log] == ["report"] * 3


@pytest.mark.anyio
async def test_only_the_scope_with_tokens_is_closed() -> None:
    settings = CoordinatorSettings(admin_tokens=["admin-t"], db_path=None)
    coordinator = Coordinator(
        settings, clock=FakeClock(), store=MemoryStore(), resolver=fake_resolver
    )
    async with coordinator:
        assert await coordinator.authenticate("agent", None, target="a1") == "anonymous"
        with pytest.raises(AuthenticationError, match="missing bearer token"):
            await coordinator.authenticate("admin", None)


@pytest.mark.anyio
async def test_a_restarted_coordinator_withholds_its_table_until_known_agents_report() -> None:
    clock = FakeClock()
    store = MemoryStore()
    settings = CoordinatorSettings(agent_tokens=["agent-t"], admin_tokens=["admin-t"], db_path=None)
    async with Coordinator(settings, clock=clock, store=store, resolver=fake_resolver) as first:
        await first.report("a1", decode(snapshot(EngineState.READY)["content"], AgentReport))
        assert not first.settling  # a first start with an empty store has nothing to wait for
    restarted = Coordinator(settings, clock=clock, store=store, resolver=fake_resolver)
    async with restarted:
        assert restarted.settling
        await restarted.report("a1", decode(snapshot(EngineState.READY)["content"], AgentReport))
        assert not restarted.settling
    again = Coordinator(settings, clock=clock, store=store, resolver=fake_resolver)
    async with again:
        assert again.settling
        clock.advance(settings.lease_ttl_s)
        assert not again.settling  # bounded by one lease TTL even if the agent never returns


@pytest.mark.anyio
async def test_a_probe_that_fails_badly_marks_its_engine_and_the_loop_goes_on() -> None:
    broken: set[str] = set()

    async def resolver(host: str, port: int) -> list[str]:
        if host in broken:
            raise RuntimeError("a resolver bug")
        return ["10.1.2.3"]

    settings = CoordinatorSettings(db_path=None, probe_interval_s=0.05)
    store = MemoryStore()
    async with Coordinator(settings, store=store, resolver=resolver) as coordinator:
        for engine_id, url in (("bad", "http://broken.local:9"), ("ok", "http://good.local:9")):
            await coordinator.register_engine(
                RegisterEngineRequest(model="m", url=url, id=engine_id)
            )
        broken.add("broken.local")  # from now on probing this one raises
        with anyio.fail_after(10):
            while coordinator.engine("bad").state is not EngineState.ERROR:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        # The loop survived the bad record: it still probes (the good engine's probe
        # fails to connect and counts up) and the coordinator still answers.
        assert "RuntimeError" in coordinator.engine("bad").reason
        assert coordinator.ready
        assert await coordinator.audit_log(5)


@pytest.mark.anyio
async def test_a_store_holding_a_bad_record_still_opens(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.db"
    store = SqliteStore(db)
    await store.open()
    bad = EngineInfo(id="octal", model="m", url="http://127.0.0.01:9", host="127.0.0.01", port=9)
    await store.put_registered(bad)
    await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO registered_engines(engine_id, info) VALUES('junk', X'7b6e6f74')")
    settings = CoordinatorSettings(db_path=db, probe_interval_s=0.05)
    async with Coordinator(settings) as coordinator:
        assert coordinator.ready
        engine = coordinator.engine("octal")
        assert engine.state is EngineState.ERROR
        assert "stored URL refused" in engine.reason
        assert [e.id for e in coordinator.engines()] == ["octal"]


@pytest.mark.anyio
async def test_a_hostile_engine_id_cannot_forge_log_lines(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = "x%0A2026-01-01 INFO audit who=admin action=engine.start result=ok" + "y" * 7000
    with caplog.at_level("INFO", logger="sage.unified.coordinator"):
        r = await env.client.get(f"/v1/management/engines/{hostile}")
    assert r.status_code == 401
    lines = [
        rec.getMessage()
        for rec in caplog.records
        if rec.name == "sage.unified.coordinator" and "audit" in rec.getMessage()
    ]
    assert lines
    for line in lines:
        assert "\n" not in line
        assert len(line) < 1200
