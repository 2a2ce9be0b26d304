"""The desired state of the fleet: deployments and cordoned hosts, kept in the store.

:class:`Fleet` holds them in memory (read by the reconciler on every pass) and writes
every change through to the :class:`~._store.Store` before it is visible, so a restarted
control plane resumes with the same deployments, revisions, rollouts and cordons. Every
change is audited and wakes the reconciler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

import msgspec

from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._errors import CoordinatorError, NotFoundError
from sage.unified.coordinator._fleet_records import (
    ApplyChange,
    CordonRecord,
    DeploymentRecord,
    applied,
    undone,
)
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.fleet import DeploymentSpec, RolloutState, RolloutStatus

__all__ = ["Fleet", "FleetStore"]

log = logging.getLogger("sage.unified.coordinator")


class FleetStore(Protocol):
    """Where deployments and cordons are kept (a :class:`~._store.Store`, or etcd)."""

    async def put_deployment(self, record: DeploymentRecord) -> None: ...
    async def delete_deployment(self, name: str) -> None: ...
    async def put_cordon(self, record: CordonRecord) -> None: ...
    async def delete_cordon(self, agent_id: str) -> None: ...


class Fleet:
    """Deployments and cordons.

    Args:
        store: where they are kept.
        auditor: every change is audited.
        clock: timestamps (wall time).
        deployments: those loaded from the store.
        cordons: those loaded from the store.
        changed: called after every change (wakes the reconciler).
    """

    def __init__(
        self,
        store: FleetStore,
        auditor: Auditor,
        clock: Clock,
        *,
        deployments: Iterable[DeploymentRecord] = (),
        cordons: Iterable[CordonRecord] = (),
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._auditor = auditor
        self._clock = clock
        self._deployments = {d.name: d for d in deployments}
        self._cordons = {c.agent_id: c for c in cordons}
        self._changed = changed

    def load(
        self, deployments: Iterable[DeploymentRecord], cordons: Iterable[CordonRecord]
    ) -> None:
        """Replace everything with what a shared store holds now (changes other control
        planes made); wakes the reconciler when something differs."""
        fresh = {d.name: d for d in deployments}
        fresh_cordons = {c.agent_id: c for c in cordons}
        if fresh != self._deployments or fresh_cordons != self._cordons:
            self._deployments = fresh
            self._cordons = fresh_cordons
            self._changed()

    # ----------------------------------------------------------------- deployments

    def records(self) -> list[DeploymentRecord]:
        """Every deployment (those being deleted too), by name."""
        return [self._deployments[name] for name in sorted(self._deployments)]

    def get(self, name: str) -> DeploymentRecord:
        """Raises :class:`NotFoundError` (404 ``deployment_not_found``)."""
        try:
            return self._deployments[name]
        except KeyError:
            raise NotFoundError(
                f"deployment {name!r} is not known (see `sage llm deployments`)",
                code="deployment_not_found",
            ) from None

    def names(self) -> frozenset[str]:
        """The names of the deployments (those being deleted too)."""
        return frozenset(self._deployments)

    def find(self, name: str) -> DeploymentRecord | None:
        return self._deployments.get(name)

    async def _put(self, record: DeploymentRecord) -> None:
        await self._store.put_deployment(record)
        self._deployments[record.name] = record
        self._changed()

    async def apply(self, spec: DeploymentSpec, who: str) -> tuple[DeploymentRecord, ApplyChange]:
        """Create or change a deployment; applying the same spec again changes nothing."""
        record, change = applied(self._deployments.get(spec.name), spec, self._clock.time())
        if change != "unchanged":
            await self._put(record)
        await self._auditor.record(
            who,
            "deployment.apply",
            spec.name,
            f"ok: {change}, revision {record.revision}, {spec.replicas} replicas "
            f"of {spec.engine.name}",
        )
        return record, change

    async def delete(self, name: str, who: str) -> DeploymentRecord:
        """Mark a deployment deleted: the reconciler drains its replicas, then forgets it.

        Raises:
            NotFoundError: no such deployment.
        """
        current = self.get(name)
        record = current
        if not current.deleting:
            record = msgspec.structs.replace(current, deleting=True, updated_at=self._clock.time())
            await self._put(record)
        await self._auditor.record(who, "deployment.delete", name, "ok: draining its replicas")
        return record

    async def undo(self, name: str, to_revision: int | None, who: str) -> DeploymentRecord:
        """Bring back an earlier revision's engine spec, as a new revision.

        Raises:
            NotFoundError: no such deployment.
            InvalidRequestError: no such earlier revision is kept.
        """
        current = self.get(name)
        try:
            record = undone(current, to_revision, self._clock.time())
        except CoordinatorError as exc:
            await self._auditor.record(who, "deployment.undo", name, f"rejected: {exc.message}")
            raise
        await self._put(record)
        back_to = next(
            e.revision for e in reversed(current.history) if e.engine == record.spec.engine
        )
        await self._auditor.record(
            who,
            "deployment.undo",
            name,
            f"ok: revision {record.revision} brings back revision {back_to}'s engine",
        )
        return record

    async def record_rollout(self, name: str, rollout: RolloutStatus) -> None:
        """Keep a rollout's end (complete or failed), as the reconciler found it."""
        current = self._deployments.get(name)
        if current is None or current.revision != rollout.revision or current.rollout == rollout:
            return
        await self._put(msgspec.structs.replace(current, rollout=rollout))
        if rollout.state is RolloutState.FAILED:
            log.warning(
                "deployment %s: rollout of revision %d failed: %s",
                name,
                rollout.revision,
                rollout.reason,
            )
        await self._auditor.record(
            "reconciler",
            "deployment.rollout",
            name,
            f"{rollout.state.value}: revision {rollout.revision}"
            + (f" ({rollout.reason})" if rollout.reason else ""),
        )

    async def forget(self, name: str) -> None:
        """Remove a deleted deployment whose replicas are all gone."""
        current = self._deployments.get(name)
        if current is None or not current.deleting:
            return
        await self._store.delete_deployment(name)
        del self._deployments[name]
        await self._auditor.record("reconciler", "deployment.deleted", name, "ok: no replica left")

    # ---------------------------------------------------------------------- hosts

    def cordon_of(self, agent_id: str) -> CordonRecord | None:
        return self._cordons.get(agent_id)

    def is_cordoned(self, agent_id: str) -> bool:
        return agent_id in self._cordons

    def is_draining(self, agent_id: str) -> bool:
        record = self._cordons.get(agent_id)
        return record is not None and record.draining

    async def cordon(self, agent_id: str, who: str, *, draining: bool = False) -> CordonRecord:
        """Cordon a host (no new engines); with ``draining``, also move its replicas off.

        Idempotent; a drained host stays draining until uncordoned.
        """
        current = self._cordons.get(agent_id)
        draining = draining or (current is not None and current.draining)
        if current is None or current.draining != draining:
            record = CordonRecord(
                agent_id=agent_id, draining=draining, at=self._clock.time(), who=who
            )
            await self._store.put_cordon(record)
            self._cordons[agent_id] = record
            self._changed()
        action = "agent.drain" if draining else "agent.cordon"
        await self._auditor.record(who, action, agent_id, "ok")
        return self._cordons[agent_id]

    async def uncordon(self, agent_id: str, who: str) -> None:
        """The host takes new engines again (and its drain, if any, ends). Idempotent."""
        if agent_id in self._cordons:
            await self._store.delete_cordon(agent_id)
            del self._cordons[agent_id]
            self._changed()
        await self._auditor.record(who, "agent.uncordon", agent_id, "ok")
