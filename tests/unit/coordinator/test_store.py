from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sage.unified.coordinator import (
    AgentRecord,
    AuditEntry,
    MemoryStore,
    SqliteStore,
    StartRequestRecord,
    Store,
)
from sage.unified.sdk.models import EngineInfo, EngineSpec


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = (
        MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "sub" / "c.db")
    )
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.anyio
async def test_round_trip(store: Store) -> None:
    await store.save_revision(7)
    await store.save_revision(5)  # never goes back
    await store.put_agents(
        [
            AgentRecord("a1", "http://10.0.0.5:8200", "10.0.0.5", 3),
            AgentRecord("a2", "http://10.0.0.6:8200", "10.0.0.6", 1),
        ]
    )
    await store.delete_agent("a2")
    await store.put_registered(EngineInfo(id="r1", model="m", url="http://127.0.0.1:8901"))
    await store.put_registered(EngineInfo(id="r2", model="m", url="http://127.0.0.1:8902"))
    await store.delete_registered("r2")
    await store.put_start_request(StartRequestRecord("e9", "a1", EngineSpec(model="m"), 1.0))
    await store.audit(
        AuditEntry(at=1.0, who="admin", action="engine.start", target="e9", result="ok")
    )
    await store.audit(
        AuditEntry(at=2.0, who="admin", action="engine.stop", target="e9", result="ok")
    )
    state = await store.open()  # re-open reads back (memory: same object)
    assert state.revision == 7
    assert state.agents == [AgentRecord("a1", "http://10.0.0.5:8200", "10.0.0.5", 3)]
    assert [e.id for e in state.registered] == ["r1"]
    assert state.registered[0].url == "http://127.0.0.1:8901"
    assert [(r.engine_id, r.spec.model) for r in state.start_requests] == [("e9", "m")]
    log = await store.audit_log(10)
    assert [e.action for e in log] == ["engine.stop", "engine.start"]  # newest first


@pytest.mark.anyio
async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    first = SqliteStore(path)
    await first.open()
    await first.save_revision(42)
    await first.put_agents([AgentRecord("a1", "http://h:8200", "h", 2)])
    await first.close()
    second = SqliteStore(path)
    state = await second.open()
    await second.close()
    assert state.revision == 42
    assert state.agents == [AgentRecord("a1", "http://h:8200", "h", 2)]


@pytest.mark.anyio
async def test_deployments_and_cordons_round_trip(store: Store) -> None:
    from sage.unified.coordinator._fleet_records import CordonRecord, applied
    from sage.unified.sdk.fleet import DeploymentSpec

    chat, _ = applied(None, DeploymentSpec(name="chat", engine=EngineSpec(model="m")), 1.0)
    chat, _ = applied(chat, DeploymentSpec(name="chat", engine=EngineSpec(model="m2")), 2.0)
    embed, _ = applied(None, DeploymentSpec(name="embed", engine=EngineSpec(model="e")), 1.0)
    await store.put_deployment(chat)
    await store.put_deployment(embed)
    await store.delete_deployment("embed")
    await store.put_cordon(CordonRecord(agent_id="a1", draining=True, at=3.0, who="admin"))
    await store.put_cordon(CordonRecord(agent_id="a2"))
    await store.delete_cordon("a2")
    state = await store.open()
    assert state.deployments == [chat]
    assert state.deployments[0].engine_of(1) == EngineSpec(model="m")
    assert state.cordons == [CordonRecord(agent_id="a1", draining=True, at=3.0, who="admin")]


@pytest.mark.anyio
async def test_a_stored_deployment_that_does_not_decode_is_skipped(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "c.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO deployments(name, record) VALUES('bad', '{\"spec\": 1}')")
    state = await store.open()
    try:
        assert state.deployments == []
    finally:
        await store.close()
