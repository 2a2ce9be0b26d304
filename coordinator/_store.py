"""Persistence behind a small interface: :class:`Store`, :class:`MemoryStore`, :class:`SqliteStore`.

What is kept: engines registered directly (no agent), start requests not yet seen in
an agent report, the revision counter, known agents (so their leases are re-armed with
grace after a restart), deployments (spec, revisions, rollout), cordoned hosts and an
audit log of control actions. Everything else is
rebuilt from the agents' next reports (anti-entropy). An etcd store would implement
the same protocol; the registry never sees it.

:class:`SqliteStore` runs stdlib ``sqlite3`` on one connection in a worker thread
(``anyio.to_thread.run_sync`` with a ``CapacityLimiter(1)``, WAL journal).
Cancellation: an operation cancelled while its thread runs still completes in the
thread; the caller just stops waiting.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec

from sage.unified.coordinator._fleet_records import CordonRecord, DeploymentRecord
from sage.unified.coordinator._registry import AgentRecord
from sage.unified.sdk.models import EngineInfo, EngineSpec, decode, encode
from sage.unified.sdk.sqlite import AsyncSqlite

__all__ = ["AuditEntry", "MemoryStore", "SqliteStore", "StartRequestRecord", "Store", "StoredState"]

T = TypeVar("T")

log = logging.getLogger("sage.unified.coordinator")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One control action: who did what to which target, and how it ended."""

    at: float
    who: str
    """``admin``, ``agent:<id>``, ``anonymous`` or ``coordinator``."""
    action: str
    target: str
    result: str


@dataclass(frozen=True, slots=True)
class StartRequestRecord:
    """A start forwarded to an agent, kept until the agent reports the engine."""

    engine_id: str
    agent_id: str
    spec: EngineSpec
    requested_at: float


@dataclass(slots=True)
class StoredState:
    """Everything :meth:`Store.load` returns."""

    revision: int = 0
    """A high-water mark: no revision above it was ever handed out."""
    agents: list[AgentRecord] = field(default_factory=list)
    registered: list[EngineInfo] = field(default_factory=list)
    start_requests: list[StartRequestRecord] = field(default_factory=list)
    deployments: list[DeploymentRecord] = field(default_factory=list)
    cordons: list[CordonRecord] = field(default_factory=list)


class Store(Protocol):
    """Durable coordinator state. Methods may be slow (I/O); none is called per heartbeat
    unless something changed."""

    async def open(self) -> StoredState: ...
    async def close(self) -> None: ...
    async def save_revision(self, revision: int) -> None: ...
    async def put_agents(self, agents: Sequence[AgentRecord]) -> None: ...
    async def delete_agent(self, agent_id: str) -> None: ...
    async def put_registered(self, engine: EngineInfo) -> None: ...
    async def delete_registered(self, engine_id: str) -> None: ...
    async def put_start_request(self, request: StartRequestRecord) -> None: ...
    async def delete_start_request(self, engine_id: str) -> None: ...
    async def audit(self, entry: AuditEntry) -> None: ...
    async def audit_log(self, limit: int = 100) -> list[AuditEntry]: ...
    async def put_deployment(self, record: DeploymentRecord) -> None: ...
    async def delete_deployment(self, name: str) -> None: ...
    async def put_cordon(self, record: CordonRecord) -> None: ...
    async def delete_cordon(self, agent_id: str) -> None: ...


class MemoryStore:
    """Keeps everything in memory (tests, and deployments that rebuild from agents)."""

    def __init__(self, audit_limit: int = 10_000) -> None:
        self._state = StoredState()
        self._agents: dict[str, AgentRecord] = {}
        self._registered: dict[str, EngineInfo] = {}
        self._starts: dict[str, StartRequestRecord] = {}
        self._audit: list[AuditEntry] = []
        self._audit_limit = audit_limit
        self._deployments: dict[str, DeploymentRecord] = {}
        self._cordons: dict[str, CordonRecord] = {}

    async def open(self) -> StoredState:
        return StoredState(
            revision=self._state.revision,
            agents=list(self._agents.values()),
            registered=list(self._registered.values()),
            start_requests=list(self._starts.values()),
            deployments=list(self._deployments.values()),
            cordons=list(self._cordons.values()),
        )

    async def close(self) -> None:
        return None

    async def save_revision(self, revision: int) -> None:
        self._state.revision = max(self._state.revision, revision)

    async def put_agents(self, agents: Sequence[AgentRecord]) -> None:
        for agent in agents:
            self._agents[agent.agent_id] = agent

    async def delete_agent(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)

    async def put_registered(self, engine: EngineInfo) -> None:
        self._registered[engine.id] = engine

    async def delete_registered(self, engine_id: str) -> None:
        self._registered.pop(engine_id, None)

    async def put_start_request(self, request: StartRequestRecord) -> None:
        self._starts[request.engine_id] = request

    async def delete_start_request(self, engine_id: str) -> None:
        self._starts.pop(engine_id, None)

    async def audit(self, entry: AuditEntry) -> None:
        self._audit.append(entry)
        if len(self._audit) > self._audit_limit:
            del self._audit[: len(self._audit) - self._audit_limit]

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        return list(reversed(self._audit[-limit:]))

    async def put_deployment(self, record: DeploymentRecord) -> None:
        self._deployments[record.name] = record

    async def delete_deployment(self, name: str) -> None:
        self._deployments.pop(name, None)

    async def put_cordon(self, record: CordonRecord) -> None:
        self._cordons[record.agent_id] = record

    async def delete_cordon(self, agent_id: str) -> None:
        self._cordons.pop(agent_id, None)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, url TEXT NOT NULL, host TEXT NOT NULL, incarnation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS registered_engines (engine_id TEXT PRIMARY KEY, info BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS start_requests (
    engine_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, spec BLOB NOT NULL, requested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (name TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cordons (agent_id TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, result TEXT NOT NULL
);
"""


AUDIT_ROWS = 100_000
"""Audit entries a SQLite store keeps (the oldest are dropped)."""


class SqliteStore:
    """SQLite file store (WAL) on one connection used from one worker thread at a time.

    Args:
        path: database file; its folder is created (mode 0700) when missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = AsyncSqlite(path, _SCHEMA, name="SqliteStore")

    async def _run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.run(func)

    async def open(self) -> StoredState:
        await self._db.open()
        return await self._run(_load)

    async def close(self) -> None:
        await self._db.close()

    async def _execute(self, sql: str, params: tuple[object, ...]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        await self._run(run)

    async def save_revision(self, revision: int) -> None:
        await self._execute(
            "INSERT INTO meta(key, value) VALUES('revision', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            (revision,),
        )

    async def put_agents(self, agents: Sequence[AgentRecord]) -> None:
        rows = [(a.agent_id, a.url, a.host, a.incarnation) for a in agents]

        def run(conn: sqlite3.Connection) -> None:
            with conn:  # one transaction for the batch
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT OR REPLACE INTO agents(agent_id, url, host, incarnation) VALUES(?, ?, ?, ?)",
                    rows,
                )

        await self._run(run)

    async def delete_agent(self, agent_id: str) -> None:
        await self._execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))

    async def put_registered(self, engine: EngineInfo) -> None:
        await self._execute(
            "INSERT OR REPLACE INTO registered_engines(engine_id, info) VALUES(?, ?)",
            (engine.id, encode(engine)),
        )

    async def delete_registered(self, engine_id: str) -> None:
        await self._execute("DELETE FROM registered_engines WHERE engine_id = ?", (engine_id,))

    async def put_start_request(self, request: StartRequestRecord) -> None:
        await self._execute(
            "INSERT OR REPLACE INTO start_requests(engine_id, agent_id, spec, requested_at) VALUES(?, ?, ?, ?)",
            (request.engine_id, request.agent_id, encode(request.spec), request.requested_at),
        )

    async def delete_start_request(self, engine_id: str) -> None:
        await self._execute("DELETE FROM start_requests WHERE engine_id = ?", (engine_id,))

    async def audit(self, entry: AuditEntry) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with conn:
                cursor = conn.execute(
                    "INSERT INTO audit(at, who, action, target, result) VALUES(?, ?, ?, ?, ?)",
                    (entry.at, entry.who, entry.action, entry.target, entry.result),
                )
                # Keep the newest AUDIT_ROWS rows: a flood of rejected requests must not
                # fill the disk. Checked every 1,000 rows, so the cost is negligible.
                row_id = cursor.lastrowid or 0
                if row_id % 1000 == 0:
                    conn.execute("DELETE FROM audit WHERE id <= ?", (row_id - AUDIT_ROWS,))

        await self._run(run)

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        def run(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute(
                "SELECT at, who, action, target, result FROM audit ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [AuditEntry(*row) for row in rows]

        return await self._run(run)

    async def put_deployment(self, record: DeploymentRecord) -> None:
        await self._execute(
            "INSERT OR REPLACE INTO deployments(name, record) VALUES(?, ?)",
            (record.name, encode(record)),
        )

    async def delete_deployment(self, name: str) -> None:
        await self._execute("DELETE FROM deployments WHERE name = ?", (name,))

    async def put_cordon(self, record: CordonRecord) -> None:
        await self._execute(
            "INSERT OR REPLACE INTO cordons(agent_id, record) VALUES(?, ?)",
            (record.agent_id, encode(record)),
        )

    async def delete_cordon(self, agent_id: str) -> None:
        await self._execute("DELETE FROM cordons WHERE agent_id = ?", (agent_id,))


def _load(conn: sqlite3.Connection) -> StoredState:
    row = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
    state = StoredState(revision=int(row[0]) if row else 0)
    state.agents = [
        AgentRecord(agent_id, url, host, int(incarnation))
        for agent_id, url, host, incarnation in conn.execute(
            "SELECT agent_id, url, host, incarnation FROM agents"
        )
    ]
    # One record that no longer decodes (written by a newer version, or damaged) must not
    # keep the store closed: it is logged and left out; the rest is served.
    for (info,) in conn.execute("SELECT info FROM registered_engines"):
        try:
            state.registered.append(decode(info, EngineInfo))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("skipping a stored registered engine that does not decode: %s", exc)
    for engine_id, agent_id, spec, at in conn.execute(
        "SELECT engine_id, agent_id, spec, requested_at FROM start_requests"
    ):
        try:
            state.start_requests.append(
                StartRequestRecord(engine_id, agent_id, decode(spec, EngineSpec), float(at))
            )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("skipping stored start request %r that does not decode: %s", engine_id, exc)
    state.deployments = _decoded(conn, "SELECT name, record FROM deployments", DeploymentRecord)
    state.cordons = _decoded(conn, "SELECT agent_id, record FROM cordons", CordonRecord)
    return state


def _decoded(conn: sqlite3.Connection, sql: str, type_: type[T]) -> list[T]:
    """Rows decoded as ``type_``; one that does not decode (written by a newer version, or
    damaged) is logged and left in the table, and the coordinator starts without it."""
    records: list[T] = []
    for key, blob in conn.execute(sql):
        try:
            records.append(decode(blob, type_))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.error("ignoring stored %s %r that does not decode: %s", type_.__name__, key, exc)
    return records
