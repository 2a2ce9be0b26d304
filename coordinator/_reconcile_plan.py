"""The reconciler's planner: from desired deployments and what runs, the next steps. Pure.

:func:`plan` takes a snapshot (:class:`PlanInputs`: deployments, hosts, replicas, pending
starts, the clock) and returns a :class:`Plan`: replicas to start (and where), to drain or
stop, rollout changes to record, and each deployment's status with the reasons it waits.
It is recomputed from scratch on every pass, so it needs no memory of earlier passes:
what agents report plus the starts they have not reported yet is the truth.

Rules, per deployment (``N`` desired replicas, surge ``S``, unavailable ``U``):

- A replica is *gone* when it is STOPPED, its host is lost (lease expired), or its start
  was never reported within ``pending_timeout_s``; it is *leaving* while DRAINING or just
  asked to drain. Neither counts.
- A replica has *failed* when it is ERROR with its restarts exhausted, on a quarantined
  GPU, or ERROR for longer than ``error_timeout_s``; during a rollout, also a replica of
  the new revision that is not READY within its ``startup_timeout_s``. A failed replica is
  stopped; one of the revision being rolled out fails the rollout (``failed``): no more
  of it is started, the old replicas stay, and missing ones start from the stable
  revision.
- A replica is *updated* when it runs the current revision (or, after a failed rollout,
  the stable one) on a host it may stay on (not draining, allowed by the placement).
- Extra updated replicas (above ``N``) are removed, not-READY ones first. Old replicas
  that are not READY are removed at once; READY old ones only while at least ``N - U``
  replicas stay READY. New ones start while fewer than ``N`` are updated and at most
  ``N + S`` replicas are counted. So with ``S = 1, U = 0`` a new replica is READY before
  an old one drains; with ``S = 0, U = 1`` one old replica drains first to make room.
- A start goes to an eligible host (live, not cordoned, allowed by the placement) that
  fits, the one with fewest replicas of the deployment first when ``spread``; when none
  fits, the deployment waits with ``no_placement`` and each host's reason.
- Nothing is done while the control plane is settling after a restart (agents have not
  all reported, so replicas would be counted short and started twice).
- A deployment that cannot be planned (a bad record) gets a ``reconcile_error`` condition
  and no action; the others are planned as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from sage.unified.coordinator._fleet_records import DeploymentRecord
from sage.unified.coordinator._placement import Candidate, claim, fit_reason, rank
from sage.unified.coordinator._reconcile_model import (
    HostView,
    Outcome,
    Plan,
    PlanInputs,
    RemoveReplica,
    ReplicaView,
    StartReplica,
)
from sage.unified.sdk.fleet import (
    DeploymentCondition,
    DeploymentStatus,
    Placement,
    ReplicaStatus,
    RolloutState,
    RolloutStatus,
)
from sage.unified.sdk.models import EngineSpec
from sage.unified.sdk.states import EngineState

__all__ = [
    "HostView",
    "Plan",
    "PlanInputs",
    "RemoveReplica",
    "ReplicaView",
    "StartReplica",
    "host_reason",
    "plan",
]


def host_reason(placement: Placement, host: HostView) -> str | None:
    """Why ``host`` may not take a replica under ``placement`` (``None``: it may)."""
    candidate = host.candidate
    if candidate.lost:
        return "agent lost (lease expired)"
    if host.draining:
        return "draining"
    if host.cordoned:
        return "cordoned"
    if placement.hosts and not {candidate.agent_id, candidate.host} & set(placement.hosts):
        return "not in placement.hosts"
    missing = [f"{k}={v}" for k, v in placement.labels.items() if host.labels.get(k) != v]
    if missing:
        return f"lacks label {', '.join(missing)}"
    return None


def _failure(r: ReplicaView, now: float, error_timeout_s: float) -> str | None:
    if r.state is not EngineState.ERROR:
        return None
    if "restarts exhausted" in r.reason:
        return "restarts exhausted"
    if "quarantined" in r.reason:
        return "its GPU is quarantined"
    if now - r.state_since > error_timeout_s:
        return f"ERROR for more than {error_timeout_s:g} s"
    return None


@dataclass(slots=True)
class _Live:
    view: ReplicaView
    updated: bool
    draining_host: bool

    @property
    def ready(self) -> bool:
        return self.view.state is EngineState.READY


class _Planner:
    """Plans one pass; keeps the hosts' claimed capacity across deployments."""

    def __init__(self, inputs: PlanInputs) -> None:
        self.inputs = inputs
        self.hosts = {h.agent_id: h for h in inputs.hosts}
        self.candidates = {h.agent_id: h.candidate for h in inputs.hosts}
        self.result = Plan()

    def run(self) -> Plan:
        by_deployment: dict[str, list[ReplicaView]] = {}
        for replica in self.inputs.replicas:
            by_deployment.setdefault(replica.deployment, []).append(replica)
        records = sorted(self.inputs.deployments, key=lambda r: r.name)
        for record in records:
            try:
                self._deployment(record, by_deployment.get(record.name, []))
            except Exception as exc:  # one bad record must not stop the others' plans
                self._broken(record, exc)
        if self.inputs.settling:
            self._hold(records)
        return self.result

    def _hold(self, records: list[DeploymentRecord]) -> None:
        """Settling: statuses only; no action, no rollout change, nothing forgotten."""
        self.result.actions.clear()
        self.result.rollouts.clear()
        self.result.forget.clear()
        for record in records:
            status = self.result.outcomes[record.name].status
            status.rollout = record.rollout
            status.conditions = [
                DeploymentCondition(
                    reason="settling",
                    message="the control plane restarted and waits for its agents to report",
                )
            ]

    def _broken(self, record: DeploymentRecord, exc: Exception) -> None:
        self.result.actions = [a for a in self.result.actions if a.deployment != record.name]
        self.result.rollouts.pop(record.name, None)
        status = DeploymentStatus(
            name=record.name,
            revision=record.revision,
            desired=record.spec.replicas,
            rollout=record.rollout,
            deleting=record.deleting,
            conditions=[
                DeploymentCondition(
                    reason="reconcile_error",
                    message=f"could not plan this deployment: {type(exc).__name__}: {exc}",
                )
            ],
        )
        self.result.outcomes[record.name] = Outcome(status=status)

    def _deployment(self, record: DeploymentRecord, replicas: list[ReplicaView]) -> None:
        rollout = record.rollout
        status = DeploymentStatus(
            name=record.name,
            revision=record.revision,
            desired=0 if record.deleting else record.spec.replicas,
            rollout=rollout,
            deleting=record.deleting,
        )
        outcome = Outcome(status=status)
        self.result.outcomes[record.name] = outcome
        live, removals = self._classify(record, replicas, status)
        status.replicas = [
            self._replica_status(r, any(x.view is r and x.updated for x in live))
            for r in sorted(replicas, key=lambda r: (r.revision, r.replica))
            if r.state is not EngineState.STOPPED
        ]
        if record.deleting and not live:
            self.result.forget.append(record.name)
        self._rolling(record, status, outcome, live, removals)

    def _replica_status(self, r: ReplicaView, updated: bool) -> ReplicaStatus:
        host = self.hosts.get(r.agent_id)
        lost = host is None or host.candidate.lost
        return ReplicaStatus(
            replica=r.replica,
            engine_id=r.engine_id,
            agent_id=r.agent_id,
            revision=r.revision,
            state="ERROR" if lost else ("PENDING" if r.state is None else r.state.value),
            reason="host lost" if lost else r.reason,
            updated=updated,
        )

    def _classify(
        self, record: DeploymentRecord, replicas: list[ReplicaView], status: DeploymentStatus
    ) -> tuple[list[_Live], list[RemoveReplica]]:
        inputs = self.inputs
        live: list[_Live] = []
        removals: list[RemoveReplica] = []
        for r in replicas:
            host = self.hosts.get(r.agent_id)
            if r.state in (EngineState.STOPPED, EngineState.DRAINING) or r.leaving:
                continue
            if host is None or host.candidate.lost:
                continue
            if r.state is None and inputs.now - r.since > inputs.pending_timeout_s:
                continue
            why = _failure(r, inputs.now, inputs.error_timeout_s)
            rollout = status.rollout
            rolling_out = (
                rollout.state is RolloutState.PROGRESSING
                and r.revision == record.revision
                and rollout.stable_revision != record.revision
            )
            if (
                why is None
                and rolling_out
                and r.state is not EngineState.READY
                and inputs.now - r.since > r.startup_timeout_s
            ):
                why = f"not READY within its startup allowance ({r.startup_timeout_s:g} s)"
            if why is not None:
                removals.append(
                    self._remove(r, drain=False, reason=f"failed: {why}", record=record)
                )
                if rolling_out:
                    status.rollout = self._fail(record, status.rollout, r, why)
                continue
            live.append(_Live(r, updated=False, draining_host=host.draining))
        acceptable = self._acceptable(record, status.rollout)
        for x in live:
            host = self.hosts[x.view.agent_id]
            x.updated = (
                x.view.revision in acceptable
                and not host.draining
                and host_reason(record.spec.placement, host) in (None, "cordoned")
            )
        return live, removals

    def _acceptable(self, record: DeploymentRecord, rollout: RolloutStatus) -> set[int]:
        if rollout.state is RolloutState.FAILED and rollout.revision == record.revision:
            stable = rollout.stable_revision
            return {record.revision} if stable is None else {record.revision, stable}
        return {record.revision}

    def _fail(
        self, record: DeploymentRecord, rollout: RolloutStatus, r: ReplicaView, why: str
    ) -> RolloutStatus:
        failed = msgspec.structs.replace(
            rollout,
            state=RolloutState.FAILED,
            reason=f"replica {r.engine_id} on {r.agent_id} failed: {why}",
            finished_at=self.inputs.now,
        )
        self.result.rollouts[record.name] = failed
        return failed

    def _remove(
        self, r: ReplicaView, *, drain: bool, reason: str, record: DeploymentRecord
    ) -> RemoveReplica:
        action = RemoveReplica(
            deployment=r.deployment,
            engine_id=r.engine_id,
            agent_id=r.agent_id,
            drain=drain,
            timeout_s=record.spec.strategy.drain_timeout_s if drain else None,
            reason=reason,
            pending=r.state is None,
        )
        self.result.actions.append(action)
        return action

    def _count(self, status: DeploymentStatus, live: list[_Live]) -> None:
        status.ready = sum(1 for x in live if x.ready)
        status.updated = sum(1 for x in live if x.updated)
        status.unavailable = max(0, status.desired - status.ready)

    def _rolling(
        self,
        record: DeploymentRecord,
        status: DeploymentStatus,
        outcome: Outcome,
        live: list[_Live],
        removals: list[RemoveReplica],
    ) -> None:
        strategy = record.spec.strategy
        desired = status.desired
        per_host = _per_host(live)
        updated = [x for x in live if x.updated]
        old = [x for x in live if not x.updated]
        available = sum(1 for x in live if x.ready)
        removed: list[_Live] = []
        if len(updated) > desired:
            extras = sorted(updated, key=lambda x: _removal_order(x, per_host))
            extras = extras[: len(updated) - desired]
            for x in extras:
                self._remove_live(x, record, "scaled down" if not record.deleting else "deleted")
            removed += extras
            updated = [x for x in updated if x not in extras]
            available -= sum(1 for x in extras if x.ready)
        may_drop = available - max(0, desired - strategy.max_unavailable)
        for x in sorted(old, key=lambda x: _removal_order(x, per_host)):
            if x.ready and may_drop <= 0:
                continue
            if x.ready:
                may_drop -= 1
            self._remove_live(x, record, _replaced_because(x))
            removed.append(x)
        need = max(0, desired - len(updated))
        room = desired + strategy.max_surge - (len(live) - len(removed))
        outcome.start = need
        outcome.remove = len(removals) + len(removed) + (len(old) - sum(x in removed for x in old))
        outcome.replace = min(len(old), need)
        self._count(status, live)
        self._starts(record, status, min(need, max(0, room)), per_host, need)
        self._rollout_progress(record, status, updated, old, removed)

    def _remove_live(self, x: _Live, record: DeploymentRecord, reason: str) -> None:
        self._remove(x.view, drain=x.ready, reason=reason, record=record)

    def _starts(
        self,
        record: DeploymentRecord,
        status: DeploymentStatus,
        count: int,
        per_host: dict[str, int],
        need: int,
    ) -> None:
        if need == 0:
            return
        rollout = status.rollout
        failed = rollout.state is RolloutState.FAILED and rollout.revision == record.revision
        revision = rollout.stable_revision if failed else record.revision
        engine = record.engine_of(revision)
        if failed:
            status.conditions.append(
                DeploymentCondition(reason="rollout_failed", message=rollout.reason)
            )
        if engine is None or revision is None:
            return
        blocked = self.inputs.start_blocked.get(record.name)
        if blocked is not None:
            status.conditions.append(DeploymentCondition(reason="start_failed", message=blocked))
            return
        if count == 0:
            status.conditions.append(
                DeploymentCondition(
                    reason="waiting_for_ready",
                    message=f"{need} replica(s) to start once others are READY or gone "
                    f"(max_surge {record.spec.strategy.max_surge}, "
                    f"max_unavailable {record.spec.strategy.max_unavailable})",
                )
            )
            return
        for _ in range(count):
            spec = msgspec.structs.replace(
                engine,
                deployment=record.name,
                deployment_revision=revision,
                replica=self.inputs.replica_ids(),
            )
            chosen = self._choose(record, spec, per_host, status)
            if chosen is None:
                return
            self.candidates[chosen] = claim(spec, self.candidates[chosen])
            per_host[chosen] = per_host.get(chosen, 0) + 1
            self.result.actions.append(
                StartReplica(
                    deployment=record.name,
                    agent_id=chosen,
                    spec=spec,
                    reason=f"revision {revision}: {need} of {status.desired} to start",
                )
            )

    def _choose(
        self,
        record: DeploymentRecord,
        spec: EngineSpec,
        per_host: dict[str, int],
        status: DeploymentStatus,
    ) -> str | None:
        reasons: dict[str, str] = {}
        fitting: list[Candidate] = []
        for agent_id, host in sorted(self.hosts.items()):
            candidate = self.candidates[agent_id]
            why = host_reason(record.spec.placement, host) or fit_reason(spec, candidate)
            if why is None:
                fitting.append(candidate)
            else:
                reasons[agent_id] = why
        if not fitting:
            message = "no host can take a replica" if reasons else "no agent is registered"
            status.conditions.append(
                DeploymentCondition(reason="no_placement", message=message, hosts=reasons)
            )
            return None
        ranked = rank(spec, fitting)
        if record.spec.placement.spread:
            order = {c.agent_id: i for i, c in enumerate(ranked)}
            ranked.sort(key=lambda c: (per_host.get(c.agent_id, 0), order[c.agent_id]))
        return ranked[0].agent_id

    def _rollout_progress(
        self,
        record: DeploymentRecord,
        status: DeploymentStatus,
        updated: list[_Live],
        old: list[_Live],
        removed: list[_Live],
    ) -> None:
        rollout = status.rollout
        if rollout.state is not RolloutState.PROGRESSING or rollout.revision != record.revision:
            return
        current = [x for x in updated if x.view.revision == record.revision]
        remaining_old = [x for x in old if x not in removed]
        if (
            len(current) == status.desired
            and all(x.ready for x in current)
            and not remaining_old
            and not record.deleting
        ):
            status.rollout = msgspec.structs.replace(
                rollout,
                state=RolloutState.COMPLETE,
                stable_revision=record.revision,
                reason="",
                finished_at=self.inputs.now,
            )
            self.result.rollouts[record.name] = status.rollout


def _per_host(live: list[_Live]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in live:
        if x.updated:
            counts[x.view.agent_id] = counts.get(x.view.agent_id, 0) + 1
    return counts


def _removal_order(x: _Live, per_host: dict[str, int]) -> tuple[bool, bool, int, str]:
    # Not-READY replicas first (they serve nothing), then those on draining hosts, then
    # the most crowded host (keeps the spread), then by id so passes agree.
    return (x.ready, not x.draining_host, -per_host.get(x.view.agent_id, 0), x.view.engine_id)


def _replaced_because(x: _Live) -> str:
    if x.draining_host:
        return "moved off a draining host"
    return f"replaced (revision {x.view.revision} is outdated or its host is not allowed)"


def plan(inputs: PlanInputs) -> Plan:
    """The next steps for every deployment (see the module docstring for the rules)."""
    return _Planner(inputs).run()
