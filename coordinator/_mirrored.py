"""A registry that follows a shared store (etcd) instead of deciding for itself. Pure.

Every gateway of a highly available deployment keeps one and feeds it the store's
changes (:mod:`sage.unified.coordinator._ha`):

- snapshots arrive already accepted by whichever gateway wrote them
  (:meth:`MirroredRegistry.apply_stored`: no checks, the store is the truth);
- an agent is lost when the store says its lease ended (:meth:`MirroredRegistry.set_lost`),
  never by this process's clock: a gateway that cannot see the store keeps what it has;
- engines of lost hosts are deleted when the store's record loses them (the leader
  applies the retention), not by a local timer;
- changes take the store's revision (:meth:`MirroredRegistry.stamp`), so every gateway
  that saw the same changes gives them the same revisions; load figures alone are
  published at most once per ``load_publish_interval_s`` as on a local registry (a
  table of 8,000 engines is not rebuilt for every agent's telemetry), at the revision of
  the change that carried them here.
"""

from __future__ import annotations

from sage.unified.coordinator._registry import Registry, _Agent
from sage.unified.coordinator._table import ExpireOutcome
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import AgentReport

__all__ = ["MirroredRegistry"]


class MirroredRegistry(Registry):
    """A :class:`Registry` whose leases and revisions come from a store.

    Args:
        clock: timestamps shown to people (and when an agent was seen lost).
        lease_ttl_s: shown as the lease of a live agent (the store holds the real one).
        load_publish_interval_s: the least time between two load-only revisions.
        revision: the store's revision the registry starts at.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        lease_ttl_s: float = 10.0,
        load_publish_interval_s: float = 1.0,
        revision: int = 0,
    ) -> None:
        super().__init__(
            clock,
            lease_ttl_s=lease_ttl_s,
            lost_engine_retention_s=float("inf"),
            load_publish_interval_s=load_publish_interval_s,
            revision=revision,
        )
        self._unstamped = False

    def apply_stored(self, report: AgentReport, *, lost: bool) -> bool:
        """Take a snapshot the store holds; returns whether the table may have changed."""
        changed = self._replace(report).changed
        return self.set_lost(report.agent_id, lost) or changed

    def set_lost(self, agent_id: str, lost: bool) -> bool:
        """The store says whether the agent's lease is alive; returns whether the table
        changed."""
        agent = self._agents.get(agent_id)
        if agent is None or lost == (agent.lost_since is not None):
            return False
        agent.lost_since = self._clock.monotonic() if lost else None
        if not agent.engine_ids:
            return False
        self._bump()
        return True

    def remove_agent(self, agent_id: str) -> bool:
        """Forget an agent and its engines (its record left the store)."""
        agent = self._agents.pop(agent_id, None)
        if agent is None:
            return False
        for engine_id in agent.engine_ids:
            known = self._engines.get(engine_id)
            if known is not None and known.agent_id == agent_id:
                del self._engines[engine_id]
        self._bump()
        return True

    def stamp(self, revision: int) -> bool:
        """Give the changes applied since the last stamp the store's ``revision`` (never
        one at or below a revision already handed out); returns whether there were any."""
        if not self._unstamped:
            return False
        self._unstamped = False
        self._revision = max(revision, self._revision + 1)
        self._table = None
        return True

    def expire(self) -> ExpireOutcome:
        """Nothing expires here: the store ends leases and the leader applies retention."""
        return ExpireOutcome(changed=False, revision=self._revision)

    def _bump(self) -> None:
        self._load_dirty = False
        self._last_load_publish = self._clock.monotonic()
        self._unstamped = True  # the revision comes with stamp()
        self._table = None

    def _lease_left(self, agent: _Agent, now: float) -> float:
        # The store keeps the lease; this process only knows whether it is alive.
        return 0.0 if agent.lost_since is not None else self.lease_ttl_s
