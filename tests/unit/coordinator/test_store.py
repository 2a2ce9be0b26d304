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
