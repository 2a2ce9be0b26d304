"""One SQLite database used from async code: a connection on a worker thread, one
statement batch at a time, never on the event loop (asyncio or trio).

Both SQLite stores (the coordinator's state, the gateway's sessions) open their file the
same way: its folder created private (0700), WAL with ``synchronous=NORMAL`` (durable at
checkpoints, and readers never wait for the writer), a 5 s busy timeout, the schema
applied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

__all__ = ["AsyncSqlite"]

T = TypeVar("T")


class AsyncSqlite:
    """The connection to the database at ``path``, used by one caller at a time.

    Args:
        path: the database file; its folder is created (mode 0700) when missing.
        schema: SQL run at open (``CREATE TABLE IF NOT EXISTS ...``).
        name: what to call the store in errors.
    """

    def __init__(self, path: Path, schema: str, *, name: str) -> None:
        self.path = path
        self._schema = schema
        self._name = name
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(self._schema)
            return conn

        self._conn = await anyio.to_thread.run_sync(connect, limiter=self._limiter)

    async def run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """``func(connection)`` on the worker thread.

        Raises:
            RuntimeError: the database is not open.
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self._name} is not open")
        return await anyio.to_thread.run_sync(func, conn, limiter=self._limiter)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)
