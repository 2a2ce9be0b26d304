"""What the coordinator writes to its store besides the audit trail: the revision mark and
the known agents.

- :class:`RevisionMark`: revisions are reserved in blocks (like a database sequence
  cache). The store holds a mark no issued revision exceeds, so a restart continues above
  every revision a watcher may have seen, with one write per block instead of per bump.
- :class:`AgentRecordWriter`: write-behind of agent records, so a burst of new agents is
  one transaction, off the report path.
"""

from __future__ import annotations

import logging

import anyio

from sage.unified.coordinator._registry import AgentRecord
from sage.unified.coordinator._store import Store

__all__ = ["REVISION_BLOCK", "AgentRecordWriter", "RevisionMark"]

log = logging.getLogger("sage.unified.coordinator")

REVISION_BLOCK = 1000
"""Revisions reserved per store write."""


class RevisionMark:
    """The highest revision the store allows to be handed out.

    Args:
        store: where the mark is kept.
        reserved: the mark loaded from the store.
    """

    def __init__(self, store: Store, reserved: int) -> None:
        self._store = store
        self.reserved = reserved

    async def cover(self, revision: int) -> None:
        """Make sure the stored mark is at least ``revision`` (a write once per block)."""
        if revision > self.reserved:
            self.reserved = revision + REVISION_BLOCK
            await self._store.save_revision(self.reserved)


class AgentRecordWriter:
    """Queues agent records and writes them in batches.

    Args:
        store: where the records go.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, AgentRecord] = {}
        self._kick = anyio.Event()

    def put(self, record: AgentRecord) -> None:
        """Queue ``record`` (the newest one per agent wins). Never blocks."""
        self._pending[record.agent_id] = record
        self._kick.set()

    async def run(self) -> None:
        """Write queued records until cancelled; a failed write is retried after 1 s."""
        while True:
            self._kick = anyio.Event()
            if not self._pending:
                await self._kick.wait()
            try:
                await self.flush()
            except Exception:
                log.exception("could not persist agent records; retrying in 1 s")
                await anyio.sleep(1.0)

    async def flush(self) -> None:
        """Write what is queued now (records of a failed write are queued again)."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self._store.put_agents(list(batch.values()))
        except BaseException:
            for agent_id, record in batch.items():
                self._pending.setdefault(agent_id, record)
            raise
