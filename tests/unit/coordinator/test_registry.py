from __future__ import annotations

import pytest

from sage.unified.coordinator._errors import (
    ConflictError,
    NotFoundError,
    ReportRejectedError,
    StaleIncarnationError,
)
from sage.unified.coordinator._registry import HOST_LOST_REASON, AgentRecord, Registry
from sage.unified.sdk.clock import FakeClock
from sage.unified.sdk.models import AgentReport, EngineInfo, EngineLoad
from sage.unified.sdk.states import EngineState


def engine(
    engine_id: str = "e1",
    *,
    host: str = "10.0.0.5",
    port: int = 8900,
    state: EngineState = EngineState.READY,
    incarnation: int = 0,
    running: int | None = None,
    url: str | None = None,
) -> EngineInfo:
    return EngineInfo(
        id=engine_id,
        model="m",
        host=host,
        port=port,
        url=url if url is not None else f"http://{host}:{port}",
        state=state,
        incarnation=incarnation,
        load=EngineLoad(running=running),
    )


def report(
    *engines: EngineInfo, agent_id: str = "a1", incarnation: int = 1, host: str = "10.0.0.5"
) -> AgentReport:
    return AgentReport(
        agent_id=agent_id,
        host=host,
        url=f"http://{host}:8200",
        incarnation=incarnation,
        engines=list(engines),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock, lease_ttl_s=10, lost_engine_retention_s=300)


def test_ready_engine_enters_table_and_bumps_revision(registry: Registry) -> None:
    outcome = registry.apply_report(report(engine()))
    assert outcome.changed
    assert outcome.agent_changed
    table = registry.routing_table()
    assert table.revision == 1
    assert [b.id for b in table.backends] == ["e1"]
    assert table.backends[0].agent_id == "a1"


def test_starting_engine_is_not_routed(registry: Registry) -> None:
    registry.apply_report(report(engine(state=EngineState.STARTING)))
    assert registry.routing_table().backends == []
    assert registry.engine("e1").state is EngineState.STARTING


def test_identical_heartbeat_does_not_bump_revision(registry: Registry, clock: FakeClock) -> None:
    registry.apply_report(report(engine()))
    clock.advance(3)
    outcome = registry.apply_report(report(engine()))
    assert not outcome.changed
    assert not outcome.agent_changed
    assert registry.revision == 1


def test_state_change_bumps_revision(registry: Registry) -> None:
    registry.apply_report(report(engine(state=EngineState.STARTING)))
    outcome = registry.apply_report(report(engine(state=EngineState.READY)))
    assert outcome.changed
    assert registry.revision == 2


def test_load_only_changes_published_at_most_once_per_interval(
    registry: Registry, clock: FakeClock
) -> None:
    registry.apply_report(report(engine(running=0)))
    assert registry.routing_table().backends[0].load.running == 0  # published at revision 1
    clock.advance(0.2)
    assert not registry.apply_report(report(engine(running=1))).changed
    assert registry.engine("e1").load.running == 1  # recorded at once
    assert registry.routing_table().backends[0].load.running == 0  # not yet published
    clock.advance(0.9)
    outcome = registry.expire()
    assert outcome.changed
    assert registry.revision == 2
    assert registry.routing_table().backends[0].load.running == 1
    clock.advance(0.1)
    assert not registry.apply_report(report(engine(running=2))).changed
    clock.advance(1.0)
    assert registry.apply_report(report(engine(running=3))).changed


def test_stale_agent_incarnation_rejected(registry: Registry) -> None:
    registry.apply_report(report(engine(), incarnation=5))
    with pytest.raises(StaleIncarnationError):
        registry.apply_report(report(incarnation=4))
    assert registry.has_engine("e1")  # nothing applied


def test_newer_agent_incarnation_accepted(registry: Registry) -> None:
    registry.apply_report(report(engine(), incarnation=5))
    outcome = registry.apply_report(report(engine(), incarnation=6))
    assert outcome.agent_changed


def test_stale_engine_incarnation_rejected(registry: Registry) -> None:
    registry.apply_report(report(engine(incarnation=3)))
    with pytest.raises(StaleIncarnationError):
        registry.apply_report(report(engine(incarnation=2)))
    assert registry.engine("e1").incarnation == 3


def test_anti_entropy_removes_engines_missing_from_snapshot(registry: Registry) -> None:
    registry.apply_report(report(engine("e1"), engine("e2", port=8901)))
    outcome = registry.apply_report(report(engine("e2", port=8901)))
    assert outcome.changed
    assert [e.id for e in registry.engines()] == ["e2"]
    with pytest.raises(NotFoundError):
        registry.engine("e1")


def test_engine_on_another_host_rejected(registry: Registry) -> None:
    with pytest.raises(ReportRejectedError, match="may only report engines"):
        registry.apply_report(report(engine(host="10.0.0.9")))
    assert registry.engines() == []


def test_engine_url_pointing_elsewhere_rejected(registry: Registry) -> None:
    with pytest.raises(ReportRejectedError, match="url"):
        registry.apply_report(report(engine(url="http://10.0.0.9:8900")))


def test_port_outside_range_rejected(registry: Registry) -> None:
    with pytest.raises(ReportRejectedError, match="outside"):
        registry.apply_report(report(engine(port=22)))


def test_engine_of_another_live_agent_rejected(registry: Registry) -> None:
    registry.apply_report(report(engine()))
    with pytest.raises(ConflictError):
        registry.apply_report(report(engine(), agent_id="a2"))


def test_skipped_transition_is_recorded_not_rejected(registry: Registry) -> None:
    registry.apply_report(report(engine(state=EngineState.STOPPED)))
    outcome = registry.apply_report(report(engine(state=EngineState.READY)))
    assert outcome.notes
    assert "STOPPED -> READY" in outcome.notes[0]
    assert registry.engine("e1").state is EngineState.READY


def test_lease_expiry_marks_host_lost_and_removes_engines_from_table(
    registry: Registry, clock: FakeClock
) -> None:
    registry.apply_report(report(engine()))
    clock.advance(9.9)
    assert not registry.expire().lost_agents
    clock.advance(0.2)
    outcome = registry.expire()
    assert outcome.lost_agents == ["a1"]
    assert outcome.changed
    assert registry.routing_table().backends == []
    info = registry.engine("e1")
    assert info.state is EngineState.ERROR
    assert info.reason == HOST_LOST_REASON
    assert registry.agent_summaries()[0].lost


def test_lost_engines_deleted_after_retention(registry: Registry, clock: FakeClock) -> None:
    registry.apply_report(report(engine()))
    clock.advance(10.1)
    registry.expire()
    clock.advance(299)
    assert not registry.expire().deleted_engines
    clock.advance(1.1)
    assert registry.expire().deleted_engines == ["e1"]
    assert registry.engines() == []


def test_lost_host_comes_back_with_report(registry: Registry, clock: FakeClock) -> None:
    registry.apply_report(report(engine()))
    clock.advance(11)
    registry.expire()
    outcome = registry.apply_report(report(engine()))
    assert outcome.changed
    assert [b.id for b in registry.routing_table().backends] == ["e1"]
    assert not registry.agent_summaries()[0].lost


def test_restored_agent_gets_ttl_plus_grace(registry: Registry, clock: FakeClock) -> None:
    registry.restore_agent(AgentRecord("a1", "http://10.0.0.5:8200", "10.0.0.5", 3), grace_s=30)
    clock.advance(39.9)
    assert registry.expire().lost_agents == []
    clock.advance(0.2)
    assert registry.expire().lost_agents == ["a1"]


def test_restored_agent_keeps_incarnation_fence(registry: Registry) -> None:
    registry.restore_agent(AgentRecord("a1", "http://10.0.0.5:8200", "10.0.0.5", 3), grace_s=30)
    with pytest.raises(StaleIncarnationError):
        registry.apply_report(report(incarnation=2))


def test_registered_engine_state_changes(registry: Registry) -> None:
    info = EngineInfo(id="r1", model="m", url="http://127.0.0.1:8901", state=EngineState.STARTING)
    assert registry.put_registered(info)
    assert registry.routing_table().backends == []
    assert registry.set_state("r1", EngineState.READY, "probe ok")
    assert not registry.set_state("r1", EngineState.READY, "probe ok")
    assert [b.id for b in registry.routing_table().backends] == ["r1"]
    registry.remove_engine("r1")
    assert registry.routing_table().backends == []
    with pytest.raises(NotFoundError):
        registry.remove_engine("r1")


def test_agent_cannot_claim_registered_engine_id(registry: Registry) -> None:
    registry.put_registered(EngineInfo(id="e1", model="m", url="http://127.0.0.1:8901"))
    with pytest.raises(ConflictError):
        registry.apply_report(report(engine()))


def test_routing_table_object_cached_between_changes(registry: Registry) -> None:
    registry.apply_report(report(engine()))
    assert registry.routing_table() is registry.routing_table()


def test_models_with_engines_but_none_ready_are_listed_as_unavailable(registry: Registry) -> None:
    starting = engine("s-1", port=8901, state=EngineState.STARTING)
    ready = engine("f-1", port=8902)
    ready.model = "fast"
    stopped = engine("x-1", port=8903, state=EngineState.STOPPED)
    stopped.model = "gone"
    starting.model = "slow"
    registry.apply_report(report(starting, ready, stopped))
    table = registry.routing_table()
    assert [b.model for b in table.backends] == ["fast"]
    assert table.unavailable_models == ["slow"]
