"""The reconciler: a loop that makes what runs follow the deployments.

Each pass gathers a snapshot (agents with their GPUs, labels and cordons; replicas the
agents report; starts they have not reported yet), asks the pure planner
(:func:`~._reconcile_plan.plan`) for the next steps and carries them out through the
engine commands (the same placement checks, agent calls and audit trail as an operator's
``engine start`` and ``engine stop``), then records rollouts that completed or failed.

Passes run every ``reconcile_interval_s`` and on every change (an apply, a cordon, a new
routing-table revision), at most one per :data:`MIN_GAP_S`. A pass has a deadline; a pass
that fails is logged and the next one waits longer (doubling up to :data:`MAX_BACKOFF_S`);
one action that fails is logged (and audited by the command) and the others go on. A
deployment whose start failed waits before the next start (2 s doubling to 60 s) and
says why in its status. Nothing is done while the control plane settles after a restart.

One object with :meth:`Reconciler.run`, so an HA control plane runs it on its elected
leader only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._errors import CoordinatorError
from sage.unified.coordinator._fleet import Fleet
from sage.unified.coordinator._fleet_records import DeploymentRecord
from sage.unified.coordinator._placement import Candidate
from sage.unified.coordinator._reconcile_model import (
    Action,
    HostView,
    Plan,
    PlanInputs,
    RemoveReplica,
    ReplicaView,
    StartReplica,
)
from sage.unified.coordinator._reconcile_plan import plan
from sage.unified.coordinator._registry import Registry
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import StartRequestRecord
from sage.unified.sdk.client import AsyncAgentClient
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import EngineInfo, EngineStartRequest, EngineStopRequest

__all__ = ["MAX_BACKOFF_S", "MIN_GAP_S", "EngineCommandsLike", "Reconciler", "StartList"]


class EngineCommandsLike(Protocol):
    """The engine commands (local: :class:`~._commands.EngineCommands`; etcd:
    :class:`~._ha._commands.EtcdEngineCommands`)."""

    def agent(self, agent_url: str) -> AsyncAgentClient: ...
    async def start(self, request: EngineStartRequest, who: str) -> EngineInfo: ...
    async def stop(self, request: EngineStopRequest, who: str) -> EngineInfo: ...


class StartList(Protocol):
    """Starts sent to agents that no report has shown yet."""

    def list(self) -> list[StartRequestRecord]: ...


log = logging.getLogger("sage.unified.coordinator")

MIN_GAP_S = 0.2
"""The least time between two passes (a burst of changes is one pass)."""
MAX_BACKOFF_S = 30.0
"""The longest wait after failed passes."""
START_BACKOFF_S = (2.0, 60.0)
"""A deployment's wait after a failed start: first, longest."""
LEAVING_S = 30.0
"""How long a replica asked to drain counts as leaving before a report says so."""
PASS_DEADLINE_FACTOR = 3.0
"""A pass may take this many agent timeouts."""


@dataclass(slots=True)
class _StartBackoff:
    until: float
    delay: float
    reason: str


def _new_replica_id() -> str:
    return uuid.uuid4().hex[:10]


class Reconciler:
    """Makes replicas follow the deployments.

    Args:
        registry: agents and engines (read only here).
        fleet: deployments and cordons.
        commands: starts and stops engines (audited, with placement checks).
        starts: starts the agents have not reported yet.
        settings: ``reconcile_interval_s``, ``replica_error_timeout_s``, lease and agent
            timeouts.
        clock: time (wall time for replicas' ages, monotonic for backoff).
        settling: whether the control plane waits for its agents after a restart.
        auditor: records stops of replicas no report showed yet (the commands audit the rest).
        replica_ids: makes replica ids (tests make them predictable).
    """

    def __init__(
        self,
        registry: Registry,
        fleet: Fleet,
        commands: EngineCommandsLike,
        starts: StartList,
        *,
        settings: CoordinatorSettings,
        clock: Clock,
        settling: Callable[[], bool],
        auditor: Auditor,
        replica_ids: Callable[[], str] = _new_replica_id,
    ) -> None:
        self._auditor = auditor
        self._registry = registry
        self._fleet = fleet
        self._commands = commands
        self._starts = starts
        self._settings = settings
        self._clock = clock
        self._settling = settling
        self._replica_ids = replica_ids
        self._kick = anyio.Event()
        self._leaving: dict[str, float] = {}
        self._start_backoff: dict[str, _StartBackoff] = {}
        self._said: dict[str, str] = {}
        self.passes = 0

    def kick(self) -> None:
        """Run a pass soon (something changed). Never blocks."""
        self._kick.set()

    # ----------------------------------------------------------------- snapshot

    def inputs(self, records: Sequence[DeploymentRecord] | None = None) -> PlanInputs:
        """The planner's view of now (of ``records`` instead of the stored deployments)."""
        now = self._clock.monotonic()
        self._leaving = {k: t for k, t in self._leaving.items() if now - t < LEAVING_S}
        blocked = {
            name: f"{b.reason}; next start in {b.until - now:.0f} s"
            for name, b in self._start_backoff.items()
            if b.until > now
        }
        return PlanInputs(
            deployments=self._fleet.records() if records is None else records,
            hosts=self._hosts(),
            replicas=self._replicas(),
            now=self._clock.time(),
            error_timeout_s=self._settings.replica_error_timeout_s,
            pending_timeout_s=3 * self._settings.lease_ttl_s,
            settling=self._settling(),
            start_blocked=blocked,
            replica_ids=self._replica_ids,
        )

    def preview(self, records: Sequence[DeploymentRecord] | None = None) -> Plan:
        """What a pass would do now, without doing it (statuses, dry runs)."""
        return plan(self.inputs(records))

    def _hosts(self) -> list[HostView]:
        views = []
        for summary, engines in self._registry.live_agents():
            cordon = self._fleet.cordon_of(summary.agent_id)
            candidate = Candidate.of(summary, len(engines), cordoned=cordon is not None)
            views.append(
                HostView(
                    candidate=candidate,
                    labels=summary.labels,
                    cordoned=cordon is not None,
                    draining=cordon is not None and cordon.draining,
                )
            )
        return views

    def _replicas(self) -> list[ReplicaView]:
        replicas: list[ReplicaView] = []
        for summary, engines in self._registry.live_agents():
            for engine in engines:
                spec = engine.spec
                if spec is None or spec.deployment is None:
                    continue
                replicas.append(
                    ReplicaView(
                        deployment=spec.deployment,
                        revision=spec.deployment_revision or 0,
                        replica=spec.replica or engine.id,
                        engine_id=engine.id,
                        agent_id=summary.agent_id,
                        state=engine.state,
                        since=engine.created_at or engine.state_changed_at,
                        state_since=engine.state_changed_at,
                        reason=engine.reason,
                        startup_timeout_s=spec.startup_timeout_s,
                        leaving=engine.id in self._leaving,
                    )
                )
        for start in self._starts.list():
            spec = start.spec
            if spec.deployment is None or self._registry.has_engine(start.engine_id):
                continue
            replicas.append(
                ReplicaView(
                    deployment=spec.deployment,
                    revision=spec.deployment_revision or 0,
                    replica=spec.replica or start.engine_id,
                    engine_id=start.engine_id,
                    agent_id=start.agent_id,
                    state=None,
                    since=start.requested_at,
                    startup_timeout_s=spec.startup_timeout_s,
                    leaving=start.engine_id in self._leaving,
                )
            )
        return replicas

    # ---------------------------------------------------------------------- loop

    async def run(self) -> None:
        """Reconcile until cancelled (see the module docstring)."""
        interval = self._settings.reconcile_interval_s
        deadline = max(10.0, PASS_DEADLINE_FACTOR * self._settings.agent_timeout_s)
        failures = 0
        while True:
            self._kick = anyio.Event()  # taken before the pass: a change during it counts
            try:
                with anyio.fail_after(deadline):
                    await self.reconcile_once()
                failures = 0
            except TimeoutError:
                failures += 1
                log.warning("reconcile pass took more than %g s; cut short", deadline)
            except Exception:
                failures += 1
                log.exception("reconcile pass failed")
            wait = interval if failures == 0 else min(MAX_BACKOFF_S, interval * 2**failures)
            with anyio.move_on_after(wait):
                await self._kick.wait()
            await anyio.sleep(MIN_GAP_S)

    async def reconcile_once(self) -> Plan:
        """One pass: plan, act, record rollouts. Returns the plan it carried out."""
        self.passes += 1
        if not self._fleet.records():
            return Plan()
        result = self.preview()
        self._tell(result)
        if result.actions:
            async with anyio.create_task_group() as tg:
                for action in result.actions:
                    tg.start_soon(self._act, action)
        for name, rollout in result.rollouts.items():
            await self._fleet.record_rollout(name, rollout)
        for name in result.forget:
            await self._fleet.forget(name)
        return result

    def _tell(self, result: Plan) -> None:
        """Log a deployment's waiting reasons when they change (not on every pass)."""
        for name, outcome in result.outcomes.items():
            said = "; ".join(
                f"{c.reason}: {c.message}"
                + (
                    " (" + ", ".join(f"{h}: {r}" for h, r in c.hosts.items()) + ")"
                    if c.hosts
                    else ""
                )
                for c in outcome.status.conditions
                if c.reason != "waiting_for_ready"
            )
            if said != self._said.get(name, ""):
                if said:
                    log.warning("deployment %s waits: %s", name, said)
                self._said[name] = said

    async def _act(self, action: Action) -> None:
        try:
            if isinstance(action, StartReplica):
                await self._start(action)
            else:
                await self._remove(action)
        except CoordinatorError as exc:
            log.warning(
                "deployment %s: %s failed: %s", action.deployment, _what(action), exc.message
            )
            if isinstance(action, StartReplica):
                self._back_off(action.deployment, exc.message)
        except Exception:  # one bad action must not end the pass or the loop
            log.exception("deployment %s: %s failed", action.deployment, _what(action))

    async def _start(self, action: StartReplica) -> None:
        request = EngineStartRequest(spec=action.spec, host=action.agent_id)
        await self._commands.start(request, "reconciler")
        self._start_backoff.pop(action.deployment, None)

    async def _remove(self, action: RemoveReplica) -> None:
        if action.pending:
            agent = self._registry.agent_summary(action.agent_id)
            await self._commands.agent(agent.url).stop(action.engine_id)
            await self._auditor.record(
                "reconciler", "engine.stop", action.engine_id, f"ok: {action.reason}"
            )
        else:
            request = EngineStopRequest(
                engine_id=action.engine_id, drain=action.drain, timeout_s=action.timeout_s
            )
            await self._commands.stop(request, "reconciler")
        self._leaving[action.engine_id] = self._clock.monotonic()

    def _back_off(self, deployment: str, reason: str) -> None:
        first, longest = START_BACKOFF_S
        previous = self._start_backoff.get(deployment)
        delay = first if previous is None else min(longest, previous.delay * 2)
        self._start_backoff[deployment] = _StartBackoff(
            until=self._clock.monotonic() + delay, delay=delay, reason=f"start failed: {reason}"
        )


def _what(action: Action) -> str:
    if isinstance(action, StartReplica):
        return f"start on {action.agent_id}"
    verb = "drain" if action.drain else "stop"
    return f"{verb} of {action.engine_id} ({action.reason})"
