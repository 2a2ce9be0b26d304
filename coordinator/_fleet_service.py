"""Operators' fleet operations: deployments, rollouts, dry runs, cordon and drain, GPU clear.

What the management routes call (through :class:`~._api.LocalSession`). Deployment
changes go to the :class:`~._fleet.Fleet` (stored, audited) and wake the reconciler;
statuses and dry runs are the planner's view of now. A host is named by its agent id or
its address (when one agent has it).
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._errors import (
    AgentUnreachableError,
    CoordinatorError,
    InvalidRequestError,
    NotFoundError,
)
from sage.unified.coordinator._fleet import Fleet
from sage.unified.coordinator._fleet_records import DeploymentRecord, applied
from sage.unified.coordinator._reconcile_model import Outcome, Plan, RemoveReplica, StartReplica
from sage.unified.coordinator._reconciler import EngineCommandsLike, Reconciler
from sage.unified.coordinator._registry import Registry
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.fleet import (
    Deployment,
    DeploymentPlan,
    DeploymentPlanEntry,
    DeploymentPlanRequest,
    DeploymentSpec,
    DeploymentStatus,
    HostDrain,
    PlannedAction,
)
from sage.unified.sdk.models import AgentSummary, EngineInfo, EngineStopRequest, GpuInfo
from sage.unified.sdk.states import EngineState

__all__ = ["FleetService"]

log = logging.getLogger("sage.unified.coordinator")

PlanChange = Literal["create", "update", "scale", "unchanged", "delete"]


class FleetService:
    """The fleet operations of one control plane.

    Args:
        registry: agents and engines.
        fleet: deployments and cordons.
        reconciler: woken by changes; plans statuses and dry runs.
        commands: drains engines and calls agents.
        auditor: records GPU clears.
        clock: timestamps.
    """

    def __init__(
        self,
        registry: Registry,
        fleet: Fleet,
        reconciler: Reconciler,
        commands: EngineCommandsLike,
        auditor: Auditor,
        clock: Clock,
    ) -> None:
        self._registry = registry
        self._fleet = fleet
        self._reconciler = reconciler
        self._commands = commands
        self._auditor = auditor
        self._clock = clock

    # ---------------------------------------------------------------- deployments

    def _deployment(self, record: DeploymentRecord, outcome: Outcome | None) -> Deployment:
        status = (
            outcome.status
            if outcome is not None
            else DeploymentStatus(
                name=record.name, revision=record.revision, desired=record.spec.replicas
            )
        )
        return Deployment(
            spec=record.spec,
            status=status,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )

    def deployments(self) -> list[Deployment]:
        outcomes = self._reconciler.preview().outcomes
        return [self._deployment(r, outcomes.get(r.name)) for r in self._fleet.records()]

    def deployment(self, name: str) -> Deployment:
        """Raises :class:`NotFoundError` for an unknown name."""
        record = self._fleet.get(name)
        return self._deployment(record, self._reconciler.preview().outcomes.get(name))

    def rollout_status(self, name: str) -> DeploymentStatus:
        return self.deployment(name).status

    async def apply(self, name: str, spec: DeploymentSpec, who: str) -> Deployment:
        """Create or change a deployment (idempotent).

        Raises:
            InvalidRequestError: the path's name is not the spec's.
        """
        if spec.name != name:
            raise InvalidRequestError(
                f"the body's name {spec.name!r} is not the path's {name!r}", param="name"
            )
        await self._fleet.apply(spec, who)
        self._reconciler.kick()
        return self.deployment(name)

    async def delete(self, name: str, who: str) -> Deployment:
        await self._fleet.delete(name, who)
        self._reconciler.kick()
        return self.deployment(name)

    async def undo(self, name: str, to_revision: int | None, who: str) -> Deployment:
        await self._fleet.undo(name, to_revision, who)
        self._reconciler.kick()
        return self.deployment(name)

    def plan(self, request: DeploymentPlanRequest) -> DeploymentPlan:
        """What applying ``request`` would do now: a dry run of the reconciler's next pass.

        Raises:
            InvalidRequestError: a name is given twice.
            NotFoundError: a deletion names no deployment.
        """
        names = [s.name for s in request.deployments] + list(request.delete)
        if len(set(names)) != len(names):
            raise InvalidRequestError("a deployment is named twice in the plan request")
        now = self._clock.time()
        records = {r.name: r for r in self._fleet.records()}
        changes: dict[str, PlanChange] = {}
        for spec in request.deployments:
            current = records.get(spec.name)
            records[spec.name], change = applied(current, spec, now)
            changes[spec.name] = change
        for name in request.delete:
            records[name] = msgspec.structs.replace(self._fleet.get(name), deleting=True)
            changes[name] = "delete"
        result = self._reconciler.preview(list(records.values()))
        return DeploymentPlan(
            entries=[
                self._entry(name, change, records[name], result) for name, change in changes.items()
            ]
        )

    def _entry(
        self, name: str, change: PlanChange, record: DeploymentRecord, result: Plan
    ) -> DeploymentPlanEntry:
        current = self._fleet.find(name)
        outcome = result.outcomes[name]
        actions = [_planned(a) for a in result.actions if a.deployment == name]
        actions += [
            PlannedAction(deployment=name, action="wait", reason=f"{c.reason}: {c.message}")
            for c in outcome.status.conditions
        ]
        return DeploymentPlanEntry(
            name=name,
            change=change,
            revision_from=None if current is None else current.revision,
            revision_to=None if change == "delete" else record.revision,
            replicas_from=0 if current is None or current.deleting else current.spec.replicas,
            replicas_to=0 if change == "delete" else record.spec.replicas,
            start=outcome.start,
            remove=outcome.remove,
            replace=outcome.replace,
            actions=actions,
            conditions=outcome.status.conditions,
        )

    # ---------------------------------------------------------------------- hosts

    def resolve(self, host: str) -> AgentSummary:
        """The agent with id ``host``, or the one agent at address ``host``.

        Raises:
            NotFoundError: none (404 ``agent_not_found``).
            InvalidRequestError: several agents share the address (name one by id).
        """
        summaries = self._registry.agent_summaries()
        by_id = [s for s in summaries if s.agent_id == host]
        if by_id:
            return self.summary(by_id[0])
        by_host = [s for s in summaries if s.host == host]
        if len(by_host) == 1:
            return self.summary(by_host[0])
        if by_host:
            ids = ", ".join(s.agent_id for s in by_host)
            raise InvalidRequestError(
                f"several agents run on {host!r} ({ids}); name one by its agent id",
                code="ambiguous_host",
            )
        raise NotFoundError(
            f"no agent has id or host {host!r} (see `sage gateway status`)", code="agent_not_found"
        )

    def names(self) -> frozenset[str]:
        """The names of the deployments that exist."""
        return self._fleet.names()

    def summary(self, agent: AgentSummary) -> AgentSummary:
        """``agent`` with its cordon flags."""
        cordon = self._fleet.cordon_of(agent.agent_id)
        return msgspec.structs.replace(
            agent,
            cordoned=cordon is not None,
            draining=cordon is not None and cordon.draining,
        )

    async def cordon(self, host: str, who: str) -> AgentSummary:
        agent = self.resolve(host)
        await self._fleet.cordon(agent.agent_id, who)
        return self.summary(agent)

    async def uncordon(self, host: str, who: str) -> AgentSummary:
        agent = self.resolve(host)
        await self._fleet.uncordon(agent.agent_id, who)
        self._reconciler.kick()
        return self.summary(agent)

    async def drain(self, host: str, who: str) -> HostDrain:
        """Cordon the host and empty it: its deployment replicas move elsewhere (the
        reconciler, with each deployment's rolling rules), its other engines drain now.

        Idempotent: engines already draining or stopped are left alone. An engine whose
        drain the agent refused is logged and audited; the others go on.
        """
        agent = self.resolve(host)
        await self._fleet.cordon(agent.agent_id, who, draining=True)
        self._reconciler.kick()
        drained: list[str] = []
        moving: list[str] = []
        remaining = 0
        for engine in self._engines_of(agent.agent_id):
            if engine.state is EngineState.STOPPED:
                continue
            remaining += 1
            owner = engine.spec.deployment if engine.spec is not None else None
            if owner is not None and self._fleet.find(owner) is not None:
                moving.append(engine.id)
                continue
            if engine.state is EngineState.DRAINING or agent.lost:
                continue  # a lost host's agent cannot be reached; its replicas are replaced
            try:
                await self._commands.stop(EngineStopRequest(engine_id=engine.id, drain=True), who)
            except CoordinatorError as exc:
                log.warning("drain of %s on %s failed: %s", engine.id, agent.agent_id, exc.message)
                continue
            drained.append(engine.id)
        return HostDrain(
            agent_id=agent.agent_id, drained=drained, moving=moving, remaining=remaining
        )

    def _engines_of(self, agent_id: str) -> list[EngineInfo]:
        return [e for e in self._registry.engines() if e.agent_id == agent_id]

    async def clear_gpu(self, host: str, index: int, who: str) -> GpuInfo:
        """Ask the host's agent to lift a GPU's quarantine (audited).

        Raises:
            NotFoundError: no such agent (or the agent has no such GPU: its 404).
            AgentUnreachableError: the agent did not answer, or its host is lost.
        """
        agent = self.resolve(host)
        target = f"{agent.agent_id}:{index}"
        try:
            if agent.lost:
                raise AgentUnreachableError(
                    f"agent {agent.agent_id!r} is lost (no report within its lease); "
                    "clear the GPU once it reports again"
                )
            gpu = await self._commands.agent(agent.url).clear_gpu(index)
        except CoordinatorError as exc:
            await self._auditor.record(who, "gpu.clear", target, f"rejected: {exc.message}")
            raise
        await self._auditor.record(who, "gpu.clear", target, f"ok: healthy={gpu.healthy}")
        return gpu


def _planned(action: StartReplica | RemoveReplica) -> PlannedAction:
    if isinstance(action, StartReplica):
        return PlannedAction(
            deployment=action.deployment,
            action="start",
            host=action.agent_id,
            revision=action.spec.deployment_revision,
            reason=action.reason,
        )
    return PlannedAction(
        deployment=action.deployment,
        action="drain" if action.drain else "stop",
        host=action.agent_id,
        engine_id=action.engine_id,
        reason=action.reason,
    )
