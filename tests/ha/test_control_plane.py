"""The coordinator on etcd (store = etcd://...), in-process against a real etcd.

Two coordinators share one etcd as two gateways would: a report taken by one is in the
other's table at the same revision; a heartbeat that changes nothing writes nothing; an
agent that stops reporting is lost on both when its etcd lease ends; starts are carried
out by the leader exactly once, also when a leader dies half-way; while etcd is down the
tables stay as they were and writes answer 503.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from sage.unified.coordinator import (
    ConflictError,
    ControlPlaneUnavailableError,
    Coordinator,
    CoordinatorSettings,
    StaleIncarnationError,
)
from sage.unified.coordinator._etcd import EtcdClient
from sage.unified.coordinator._ha import KeySpace
from sage.unified.coordinator._ha._records import StartIntent
from sage.unified.sdk.models import (
    AgentReport,
    EngineInfo,
    EngineLoad,
    EngineSpec,
    EngineStartRequest,
    RegisterEngineRequest,
    Runtime,
    decode,
    encode,
)
from sage.unified.sdk.states import EngineState

pytestmark = pytest.mark.anyio

# The code is backend-neutral; the tests that wait for leases or for etcd to come back
# run on one backend each (some on asyncio, some on trio) to keep the suite short.


def settings_for(url: str, prefix: str, **overrides: Any) -> CoordinatorSettings:
    values: dict[str, Any] = {
        "store": url,
        "etcd_prefix": prefix,
        "db_path": None,
        "lease_ttl_s": 2.0,
        "heartbeat_interval_s": 0.5,
        "leader_lease_ttl_s": 2,
        "etcd_timeout_s": 2.0,
        "watch_coalesce_s": 0.0,
        "agent_timeout_s": 2.0,
        "probe_interval_s": 0.2,
        **overrides,
    }
    return CoordinatorSettings(**values)


def report(
    *states: EngineState, agent: str = "a1", incarnation: int = 1, running: int = 0
) -> AgentReport:
    host = {"a1": "10.0.0.5", "a2": "10.0.0.6"}[agent]
    return AgentReport(
        agent_id=agent,
        host=host,
        url=f"http://{host}:8200",
        incarnation=incarnation,
        gpu_free_runtimes=[Runtime.SIMULATED],
        engines=[
            EngineInfo(
                id=f"{agent}-e{i}",
                model="m",
                host=host,
                port=8900 + i,
                url=f"http://{host}:{8900 + i}",
                state=s,
                agent_id=agent,
                load=EngineLoad(running=running),
            )
            for i, s in enumerate(states)
        ],
    )


class FakeAgents:
    """Agents' start endpoint behind an httpx MockTransport: counts launches per id and,
    like a real agent, answers a repeated start of a known id with the same engine."""

    def __init__(self) -> None:
        self.launches: dict[str, int] = {}
        self.calls = 0
        self.hold: anyio.Event | None = None

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        engine_id = request.url.params["engine_id"]
        spec = json.loads(request.content)
        first = engine_id not in self.launches
        if first:
            self.launches[engine_id] = 1
        if self.hold is not None:
            await self.hold.wait()
        info = EngineInfo(
            id=engine_id,
            model=spec["model"],
            host=request.url.host,
            port=8950,
            url=f"http://{request.url.host}:8950",
            state=EngineState.STARTING,
            agent_id="a1",
        )
        return httpx.Response(201, content=encode(info))


async def wait_until(check: Callable[[], bool], within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110 (polling in-process state: nothing to await)
            await anyio.sleep(0.02)


@pytest.fixture
def prefix(key_prefix: str) -> str:
    """This test's etcd prefix (the settings allow letters, digits and ``_./-``)."""
    return re.sub(r"[^A-Za-z0-9_./-]", "-", key_prefix)


@asynccontextmanager
async def coordinators(
    url: str, prefix: str, count: int = 2, agents: FakeAgents | None = None, **overrides: Any
) -> AsyncIterator[list[Coordinator]]:
    async with AsyncExitStack() as stack:
        http = None
        if agents is not None:
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.MockTransport(agents.handler))
            )
        started = []
        for _ in range(count):
            coordinator = Coordinator(settings_for(url, prefix, **overrides), http_client=http)
            started.append(await stack.enter_async_context(coordinator))
        yield started


def engine_ids(coordinator: Coordinator) -> list[str]:
    return [b.id for b in coordinator.routing_table().backends]


async def test_a_report_to_one_gateway_is_in_every_gateways_table_at_the_same_revision(
    shared_etcd, prefix
) -> None:  # type: ignore[no-untyped-def]
    async with coordinators(shared_etcd.etcd_url, prefix) as (one, two):
        await one.report("a1", report(EngineState.READY, EngineState.STARTING))
        await wait_until(lambda: engine_ids(two) == ["a1-e0"])
        assert engine_ids(one) == ["a1-e0"]
        assert one.revision == two.revision > 0
        assert [a.agent_id for a in two.agents()] == ["a1"]
        # A stale incarnation is refused by the other gateway too.
        await two.report("a1", report(EngineState.READY, incarnation=2))
        await wait_until(lambda: one.registry.agent_summary("a1").incarnation == 2)
        with pytest.raises(StaleIncarnationError):
            await one.report("a1", report(EngineState.READY, incarnation=1))


@pytest.mark.parametrize("anyio_backend", [("trio", {})], ids=["trio"])
async def test_a_heartbeat_that_changes_nothing_writes_nothing_but_keeps_the_lease(
    shared_etcd, prefix
) -> None:  # type: ignore[no-untyped-def]
    async with (
        coordinators(shared_etcd.etcd_url, prefix, count=1) as (one,),
        EtcdClient(shared_etcd.etcd_url) as etcd,
    ):
        await one.report("a1", report(EngineState.READY))
        state = KeySpace(prefix).state
        before = [(kv.key, kv.mod_revision) for kv in (await etcd.get_prefix(state)).kvs]
        with anyio.fail_after(10):
            for _ in range(8):  # 4 s: two lease TTLs
                await one.report("a1", report(EngineState.READY, running=3))
                await anyio.sleep(0.5)
        after = [(kv.key, kv.mod_revision) for kv in (await etcd.get_prefix(state)).kvs]
        assert after == before
        assert not one.registry.is_lost("a1")
        assert engine_ids(one) == ["a1-e0"]


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})], ids=["asyncio"])
async def test_an_agent_that_stops_reporting_is_lost_everywhere_and_comes_back(
    shared_etcd, prefix
) -> None:  # type: ignore[no-untyped-def]
    async with coordinators(shared_etcd.etcd_url, prefix) as (one, two):
        await one.report("a1", report(EngineState.READY))
        await wait_until(lambda: engine_ids(two) == ["a1-e0"])
        started = anyio.current_time()
        await wait_until(lambda: two.registry.is_lost("a1") and one.registry.is_lost("a1"))
        lost_after = anyio.current_time() - started
        assert 1.0 <= lost_after <= 6.0  # TTL 2 s, renewal rounds of 0.2 s, etcd's checks
        assert engine_ids(one) == engine_ids(two) == []
        assert one.engine("a1-e0").reason == "host lost"
        await two.report("a1", report(EngineState.READY))
        await wait_until(lambda: engine_ids(one) == ["a1-e0"])
        assert one.revision == two.revision


async def test_a_registered_engine_is_written_once_and_seen_by_both(shared_etcd, prefix) -> None:  # type: ignore[no-untyped-def]
    async with coordinators(shared_etcd.etcd_url, prefix) as (one, two):
        request = RegisterEngineRequest(model="m", url="http://10.0.0.9:8000", id="reg-1")
        info = await one.register_engine(request)
        assert info.id == "reg-1"
        await wait_until(lambda: two.registry.has_engine("reg-1"))
        with pytest.raises(Exception, match="already exists"):
            await two.register_engine(request)


async def test_a_start_is_carried_out_once_by_the_leader(shared_etcd, prefix) -> None:  # type: ignore[no-untyped-def]
    agents = FakeAgents()
    async with coordinators(shared_etcd.etcd_url, prefix, agents=agents) as (one, two):
        await one.report("a1", report())
        await wait_until(lambda: one.is_leader or two.is_leader)
        follower = two if one.is_leader else one
        await wait_until(lambda: bool(one.agents() and two.agents()))
        started = await follower.start_engine(
            EngineStartRequest(spec=EngineSpec(model="m", runtime=Runtime.SIMULATED))
        )
        assert started.state is EngineState.STARTING
        assert list(agents.launches) == [started.id]
        with anyio.fail_after(5):  # audited by the leader right after it recorded the answer
            while not any(  # noqa: ASYNC110 (polling etcd: nothing to await)
                e.action == "engine.start" and e.result.startswith("ok")
                for e in await follower.audit_log(5)
            ):
                await anyio.sleep(0.05)


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})], ids=["asyncio"])
async def test_a_leader_that_dies_during_a_start_leaves_exactly_one_engine(
    shared_etcd, prefix
) -> None:  # type: ignore[no-untyped-def]
    """The leader calls the agent and stops before recording the answer; its successor
    calls again with the same engine id and the agent returns the engine it started."""
    agents = FakeAgents()
    agents.hold = anyio.Event()
    url = shared_etcd.etcd_url
    outcome: list[EngineInfo] = []
    doomed: list[Coordinator] = []
    stop_doomed = anyio.Event()

    async def run_doomed() -> None:
        async with coordinators(url, prefix, agents=agents, count=1) as (coordinator,):
            doomed.append(coordinator)
            await stop_doomed.wait()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(run_doomed)
        await wait_until(lambda: bool(doomed) and doomed[0].is_leader)
        async with coordinators(url, prefix, agents=agents, count=1) as (survivor,):
            await survivor.report("a1", report())
            await wait_until(lambda: bool(doomed[0].agents()))

            async def start() -> None:
                spec = EngineSpec(model="m", runtime=Runtime.SIMULATED)
                outcome.append(await survivor.start_engine(EngineStartRequest(spec=spec)))

            async with anyio.create_task_group() as starting:
                starting.start_soon(start)
                await wait_until(lambda: agents.calls == 1)  # the leader is in the agent call
                stop_doomed.set()  # and stops there: its intent is left "placed"
                await wait_until(lambda: not doomed[0].ready)
                agents.hold.set()
            assert survivor.is_leader
    assert [info.id for info in outcome] == list(agents.launches)
    assert agents.calls == 2  # the successor asked again ...
    assert agents.launches == {outcome[0].id: 1}  # ... and one engine was started


@pytest.mark.parametrize("anyio_backend", [("trio", {})], ids=["trio"])
async def test_while_etcd_is_down_tables_stay_and_writes_get_503(etcd, prefix) -> None:  # type: ignore[no-untyped-def]
    async with coordinators(etcd.etcd_url, prefix) as (one, two):
        await one.report("a1", report(EngineState.READY))
        await wait_until(lambda: engine_ids(two) == ["a1-e0"])
        revision = two.revision
        etcd.kill()
        await wait_until(lambda: not one.store_status.reachable, 10)
        with pytest.raises(ControlPlaneUnavailableError):
            await one.report("a1", report(EngineState.READY))
        with pytest.raises(ControlPlaneUnavailableError) as refused:
            await two.register_engine(RegisterEngineRequest(model="m", url="http://10.0.0.9:1"))
        assert refused.value.status == 503
        assert refused.value.headers["retry-after"]
        await anyio.sleep(3)  # longer than the agent's lease TTL: nothing expires locally
        assert engine_ids(one) == engine_ids(two) == ["a1-e0"]
        assert two.revision == revision
        etcd.start()
        await wait_until(lambda: one.store_status.reachable and two.store_status.reachable, 30)
        await one.report("a1", report(EngineState.READY, EngineState.READY))
        await wait_until(lambda: engine_ids(two) == ["a1-e0", "a1-e1"], 15)


def test_start_intents_round_trip() -> None:
    intent = StartIntent(
        engine_id="m-abc123", spec=EngineSpec(model="m"), requested_at=1.0, phase="placed"
    )
    assert decode(encode(intent), StartIntent) == intent


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})], ids=["asyncio"])
async def test_the_leader_deletes_the_engines_of_a_host_lost_past_the_retention(
    shared_etcd, prefix
) -> None:  # type: ignore[no-untyped-def]
    async with coordinators(shared_etcd.etcd_url, prefix, lost_engine_retention_s=1.0) as (
        one,
        two,
    ):
        await one.report("a1", report(EngineState.READY))
        await wait_until(lambda: two.registry.has_engine("a1-e0"))
        await wait_until(lambda: not two.registry.has_engine("a1-e0"), 15)
        assert one.engines() == two.engines() == []
        assert [(a.agent_id, a.lost) for a in two.agents()] == [("a1", True)]


async def test_deployments_and_cordons_are_shared_and_a_concurrent_change_loses(
    shared_etcd, prefix
) -> None:  # type: ignore[no-untyped-def]
    from sage.unified.sdk.fleet import DeploymentSpec

    async with coordinators(shared_etcd.etcd_url, prefix) as (one, two):
        await one.report("a1", report())
        await wait_until(lambda: bool(two.agents()))
        spec = DeploymentSpec(
            name="chat", engine=EngineSpec(model="m", runtime=Runtime.SIMULATED), replicas=0
        )
        await one.fleet.apply("chat", spec, "admin")
        await wait_until(lambda: [d.spec.name for d in two.fleet.deployments()] == ["chat"])
        await two.fleet.cordon("a1", "admin")
        await wait_until(lambda: one.agents()[0].cordoned)
        # Both change the deployment from the same revision: one write wins, one is 409.
        wider = msgspec.structs.replace(spec, replicas=1)
        outcomes = []

        async def apply(coordinator: Coordinator) -> None:
            try:
                await coordinator.fleet.apply("chat", wider, "admin")
                outcomes.append("ok")
            except ConflictError as exc:
                outcomes.append(str(exc.code))

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(apply, one)
            task_group.start_soon(apply, two)
        assert sorted(outcomes) in (["concurrent_change", "ok"], ["ok", "ok"])
        await wait_until(lambda: two.fleet.deployment("chat").spec.replicas == 1)
