"""Leader-only upkeep of the state in etcd: :class:`Housekeeper`, and where probe results
of registered engines go (:class:`RegisteredStateWriter`).

Once a second the leader:

- deletes the engines of hosts lost for ``lost_engine_retention_s`` (their snapshot is
  rewritten without engines; the agent stays listed as lost). The time a host has been
  lost is counted from when this leader first saw it lost, so a leader change only ever
  delays the deletion;

and every minute keeps the newest audit entries (:data:`~._audit.AUDIT_KEYS`), and every
``COMPACT_EVERY_S`` compacts etcd's history up to the revision of the previous round, so
history is kept for at least that long (a watch that falls further behind reads the
state again).

Every write is a compare-and-swap on the key's revision and on the leader's election key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import msgspec

from sage.unified.coordinator._etcd import Compare, EtcdClient, EtcdError, PutOp
from sage.unified.coordinator._ha._audit import EtcdAuditStore
from sage.unified.coordinator._ha._mirror import StateMirror
from sage.unified.coordinator._ha._records import KeySpace
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import EngineInfo, decode, encode
from sage.unified.sdk.states import EngineState

__all__ = ["COMPACT_EVERY_S", "Housekeeper", "RegisteredStateWriter"]

log = logging.getLogger("sage.unified.coordinator")

COMPACT_EVERY_S = 300.0
_AUDIT_TRIM_EVERY_S = 60.0
_ROUND_S = 1.0

Fence = Callable[[], Compare | None]


class RegisteredStateWriter:
    """Writes a registered engine's probed state to etcd (the prober's sink on the leader).

    Args:
        etcd: the client.
        keys: the deployment's key space.
        mirror: the engine's key as last seen.
        fence: the leadership compare.
        clock: ``state_changed_at``.
    """

    def __init__(
        self, etcd: EtcdClient, keys: KeySpace, mirror: StateMirror, fence: Fence, clock: Clock
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self._mirror = mirror
        self._fence = fence
        self._clock = clock

    async def __call__(self, engine_id: str, state: EngineState, reason: str) -> None:
        kv = self._mirror.state.registered.get(engine_id)
        fence = self._fence()
        if kv is None or fence is None:
            return
        info = msgspec.structs.replace(
            decode(kv.value, EngineInfo),
            state=state,
            reason=reason,
            state_changed_at=self._clock.time(),
        )
        key = self._keys.registered(engine_id)
        result = await self._etcd.txn(
            [Compare.mod_revision(key, "==", kv.mod_revision), fence], [PutOp(key, encode(info))]
        )
        if result.succeeded:
            log.info("registered engine %s -> %s (%s)", engine_id, state.value, reason)


class Housekeeper:
    """The leader's upkeep (a leader task); see the module docstring.

    Args:
        etcd: the client.
        keys: the deployment's key space.
        mirror: the state.
        audit: the audit store to trim.
        fence: the leadership compare.
        settings: ``lost_engine_retention_s``.
        clock: monotonic time for the retention.
    """

    def __init__(
        self,
        etcd: EtcdClient,
        keys: KeySpace,
        mirror: StateMirror,
        audit: EtcdAuditStore,
        fence: Fence,
        *,
        settings: CoordinatorSettings,
        clock: Clock,
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self._mirror = mirror
        self._audit = audit
        self._fence = fence
        self._settings = settings
        self._clock = clock
        self._lost_since: dict[str, float] = {}
        self._compact_to = 0

    async def run(self) -> None:
        """Until cancelled: retention every second, audit and history on their periods."""
        # Counted afresh in every term: what this process saw while another led is stale.
        self._lost_since.clear()
        next_trim = next_compaction = self._clock.monotonic()
        while True:
            now = self._clock.monotonic()
            try:
                await self.apply_retention()
                if now >= next_trim:
                    next_trim = now + _AUDIT_TRIM_EVERY_S
                    await self._audit.trim()
                if now >= next_compaction:
                    next_compaction = now + COMPACT_EVERY_S
                    await self.compact()
            except EtcdError as exc:
                log.warning("leader upkeep: etcd failed (%s); next round", exc)
            await anyio.sleep(_ROUND_S)

    async def apply_retention(self) -> None:
        """Rewrite the snapshots of agents lost longer than the retention without engines."""
        state = self._mirror.state
        now = self._clock.monotonic()
        for agent_id in list(self._lost_since):
            if agent_id in state.alive or agent_id not in state.agents:
                del self._lost_since[agent_id]
        for agent_id, entry in list(state.agents.items()):
            if agent_id in state.alive:
                continue
            since = self._lost_since.setdefault(agent_id, now)
            engines = entry.stored.report.engines
            if not engines or now - since < self._settings.lost_engine_retention_s:
                continue
            fence = self._fence()
            if fence is None:
                return
            emptied = msgspec.structs.replace(
                entry.stored, report=msgspec.structs.replace(entry.stored.report, engines=[])
            )
            key = self._keys.agent(agent_id)
            result = await self._etcd.txn(
                [Compare.mod_revision(key, "==", entry.kv.mod_revision), fence],
                [PutOp(key, encode(emptied))],
            )
            if result.succeeded:
                log.info(
                    "deleted the engines of lost host %s: %s",
                    agent_id,
                    ", ".join(e.id for e in engines),
                )

    async def compact(self) -> None:
        """Drop etcd's history older than the previous round (kept one period at least)."""
        target, self._compact_to = self._compact_to, self._mirror.state.revision
        if target > 0:
            await self._etcd.compact(target)
            log.info("etcd history compacted up to revision %d", target)
