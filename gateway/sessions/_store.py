"""Session persistence behind a small protocol: :class:`SessionStore`, :class:`SqliteSessionStore`.

:class:`SqliteSessionStore` runs stdlib ``sqlite3`` on one connection in a worker thread
(``anyio.to_thread.run_sync`` with a ``CapacityLimiter(1)``, WAL journal), as the
coordinator's store does. Every method is one transaction, so two requests of one
session never interleave their turns. Limits (:class:`SessionLimits`) are enforced on
write, oldest first. Cancellation: an operation cancelled while its thread runs still
completes in the thread; the caller just stops waiting.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sage.unified.gateway.sessions._model import (
    Message,
    Session,
    SessionLimits,
    SessionSummary,
    title_from,
)
from sage.unified.sdk.sqlite import AsyncSqlite

__all__ = ["SessionStats", "SessionStore", "SqliteSessionStore", "message_bytes"]

T = TypeVar("T")
SessionStats = dict[str, int]
"""``{"total_sessions": n, "total_messages": m}`` of one owner."""


class SessionStore(Protocol):
    """Durable sessions, always addressed as ``(owner, session_id)``."""

    limits: SessionLimits

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def create(self, owner: str, *, title: str | None = None) -> Session:
        """A new empty session with a fresh id."""
        ...

    async def get(self, owner: str, session_id: str) -> Session | None: ...
    async def list_sessions(
        self, owner: str, limit: int = 100
    ) -> tuple[list[SessionSummary], SessionStats]:
        """The owner's sessions, most recently active first, and their totals."""
        ...

    async def delete(self, owner: str, session_id: str) -> bool: ...
    async def clear(self, owner: str, session_id: str) -> bool:
        """Remove every message; the session (and its title) stays."""
        ...

    async def set_title(self, owner: str, session_id: str, title: str) -> bool: ...
    async def cleanup(self, owner: str, max_idle_s: float) -> int:
        """Delete the owner's sessions idle for more than ``max_idle_s``; how many."""
        ...

    async def history(self, owner: str, session_id: str) -> list[Message]:
        """The session's messages, oldest first; the session is created when missing."""
        ...

    async def append(self, owner: str, session_id: str, messages: Sequence[Message]) -> bool:
        """Add one turn at once. ``False`` when the session was deleted meanwhile."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    owner TEXT NOT NULL, id TEXT NOT NULL, title TEXT,
    created_at REAL NOT NULL, last_active REAL NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions(last_active);
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions(owner, last_active);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, session_id TEXT NOT NULL,
    role TEXT NOT NULL, content TEXT NOT NULL, timestamp REAL NOT NULL,
    metadata TEXT NOT NULL, bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages(owner, session_id, seq);
"""


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def message_bytes(content: Any) -> int:
    """A message's size as the store counts it: its content as UTF-8 JSON."""
    return len(_encode(content).encode("utf-8"))


class SqliteSessionStore:
    """Sessions in one SQLite file (WAL), used from one worker thread at a time.

    Args:
        path: database file; its folder is created (mode 0700) when missing.
        limits: what is kept (see :class:`SessionLimits`).
        clock: wall time, injectable for tests.
    """

    def __init__(
        self,
        path: Path,
        limits: SessionLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limits = limits or SessionLimits()
        self._clock = clock
        self._db = AsyncSqlite(path, _SCHEMA, name="SqliteSessionStore")

    async def _run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.run(func)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def create(self, owner: str, *, title: str | None = None) -> Session:
        now = self._clock()
        session_id = str(uuid.uuid4())
        clean = title_from(title) if title else None

        def run(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                self._insert(conn, owner, session_id, clean, now)

        await self._run(run)
        return Session(session_id, clean or None, now, now, [])

    def _insert(
        self, conn: sqlite3.Connection, owner: str, session_id: str, title: str | None, now: float
    ) -> None:
        (count,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
        excess = int(count) + 1 - self.limits.max_sessions
        if excess > 0:
            oldest = conn.execute(
                "SELECT owner, id FROM sessions ORDER BY last_active LIMIT ?", (excess,)
            ).fetchall()
            for row in oldest:
                _delete(conn, *row)
        conn.execute(
            "INSERT INTO sessions(owner, id, title, created_at, last_active) VALUES(?, ?, ?, ?, ?)",
            (owner, session_id, title, now, now),
        )

    async def get(self, owner: str, session_id: str) -> Session | None:
        def run(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT title, created_at, last_active FROM sessions WHERE owner = ? AND id = ?",
                (owner, session_id),
            ).fetchone()
            if row is None:
                return None
            return Session(session_id, row[0], row[1], row[2], _messages(conn, owner, session_id))

        return await self._run(run)

    async def list_sessions(
        self, owner: str, limit: int = 100
    ) -> tuple[list[SessionSummary], SessionStats]:
        def run(conn: sqlite3.Connection) -> tuple[list[SessionSummary], SessionStats]:
            rows = conn.execute(
                "SELECT id, title, created_at, last_active, message_count FROM sessions "
                "WHERE owner = ? ORDER BY last_active DESC, created_at DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
            total, messages = conn.execute(
                "SELECT count(*), coalesce(sum(message_count), 0) FROM sessions WHERE owner = ?",
                (owner,),
            ).fetchone()
            stats = {"total_sessions": int(total), "total_messages": int(messages)}
            return [SessionSummary(*row) for row in rows], stats

        return await self._run(run)

    async def delete(self, owner: str, session_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                return _delete(conn, owner, session_id)

        return await self._run(run)

    async def clear(self, owner: str, session_id: str) -> bool:
        now = self._clock()

        def run(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                updated = conn.execute(
                    "UPDATE sessions SET message_count = 0, bytes = 0, last_active = ? "
                    "WHERE owner = ? AND id = ?",
                    (now, owner, session_id),
                ).rowcount
                conn.execute(
                    "DELETE FROM messages WHERE owner = ? AND session_id = ?", (owner, session_id)
                )
                return bool(updated)

        return await self._run(run)

    async def set_title(self, owner: str, session_id: str, title: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            with conn:
                return bool(
                    conn.execute(
                        "UPDATE sessions SET title = ? WHERE owner = ? AND id = ?",
                        (title_from(title), owner, session_id),
                    ).rowcount
                )

        return await self._run(run)

    async def cleanup(self, owner: str, max_idle_s: float) -> int:
        idle_before = self._clock() - max_idle_s

        def run(conn: sqlite3.Connection) -> int:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                ids = conn.execute(
                    "SELECT id FROM sessions WHERE owner = ? AND last_active < ?",
                    (owner, idle_before),
                ).fetchall()
                for (session_id,) in ids:
                    _delete(conn, owner, session_id)
                return len(ids)

        return await self._run(run)

    async def history(self, owner: str, session_id: str) -> list[Message]:
        now = self._clock()

        def run(conn: sqlite3.Connection) -> list[Message]:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                exists = conn.execute(
                    "SELECT 1 FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)
                ).fetchone()
                if exists is None:
                    self._insert(conn, owner, session_id, None, now)
                    return []
                return _messages(conn, owner, session_id)

        return await self._run(run)

    async def append(self, owner: str, session_id: str, messages: Sequence[Message]) -> bool:
        now = self._clock()
        rows = [
            (m.role, _encode(m.content), m.timestamp, _encode(m.metadata), message_bytes(m.content))
            for m in messages
        ]
        first_user = next(
            (m.content for m in messages if m.role == "user" and isinstance(m.content, str)), None
        )

        def run(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT title FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)
                ).fetchone()
                if row is None:
                    return False
                conn.executemany(
                    "INSERT INTO messages(owner, session_id, role, content, timestamp, metadata, "
                    "bytes) VALUES(?, ?, ?, ?, ?, ?, ?)",
                    [(owner, session_id, *r) for r in rows],
                )
                # SAGE never titled a session from its first message (its "no title yet"
                # branch was unreachable); here an untitled session takes it.
                title = row[0] or (title_from(first_user) if first_user else None) or None
                self._trim(conn, owner, session_id)
                conn.execute(
                    "UPDATE sessions SET title = ?, last_active = ? WHERE owner = ? AND id = ?",
                    (title, now, owner, session_id),
                )
                self._trim_total(conn, owner, session_id)
                return True

        return await self._run(run)

    def _trim(self, conn: sqlite3.Connection, owner: str, session_id: str) -> None:
        """Drop the session's oldest messages past its count and byte limits.

        The window then starts at a user message, so the engine never gets a history
        that opens with an answer to a question it cannot see.
        """
        rows = conn.execute(
            "SELECT seq, bytes, role FROM messages WHERE owner = ? AND session_id = ? "
            "ORDER BY seq DESC",
            (owner, session_id),
        ).fetchall()
        kept: list[tuple[int, int, str]] = []
        size = 0
        for row in rows:
            if (
                len(kept) + 1 > self.limits.max_messages
                or size + row[1] > self.limits.max_session_bytes
            ):
                break
            kept.append(row)
            size += row[1]
        if len(kept) < len(rows):
            while len(kept) > 1 and kept[-1][2] != "user":
                size -= kept.pop()[1]
            first_kept = kept[-1][0] if kept else rows[0][0] + 1
            conn.execute(
                "DELETE FROM messages WHERE owner = ? AND session_id = ? AND seq < ?",
                (owner, session_id, first_kept),
            )
        conn.execute(
            "UPDATE sessions SET message_count = ?, bytes = ? WHERE owner = ? AND id = ?",
            (len(kept), size, owner, session_id),
        )

    def _trim_total(self, conn: sqlite3.Connection, owner: str, session_id: str) -> None:
        """Remove the least recently active other sessions while the total is over."""
        (total,) = conn.execute("SELECT coalesce(sum(bytes), 0) FROM sessions").fetchone()
        while int(total) > self.limits.max_total_bytes:
            row = conn.execute(
                "SELECT owner, id, bytes FROM sessions WHERE NOT (owner = ? AND id = ?) "
                "ORDER BY last_active LIMIT 1",
                (owner, session_id),
            ).fetchone()
            if row is None:
                return
            _delete(conn, row[0], row[1])
            total = int(total) - int(row[2])


def _delete(conn: sqlite3.Connection, owner: str, session_id: str) -> bool:
    conn.execute("DELETE FROM messages WHERE owner = ? AND session_id = ?", (owner, session_id))
    deleted = conn.execute(
        "DELETE FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)
    ).rowcount
    return bool(deleted)


def _messages(conn: sqlite3.Connection, owner: str, session_id: str) -> list[Message]:
    return [
        Message(role, json.loads(content), timestamp, json.loads(metadata))
        for role, content, timestamp, metadata in conn.execute(
            "SELECT role, content, timestamp, metadata FROM messages "
            "WHERE owner = ? AND session_id = ? ORDER BY seq",
            (owner, session_id),
        )
    ]
