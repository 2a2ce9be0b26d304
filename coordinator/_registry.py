"""The registry: agents, their leases, engines, and the routing table at a revision.

Pure: no I/O, no framework; time comes from an injected :class:`~sage.unified.sdk.clock.Clock`
(monotonic for leases, wall time only for timestamps shown to people).

Revision rule: the revision goes up when the engine set or any engine's routable
view changes (state, reason, incarnation, url, model, ...). Heartbeats that change
nothing leave it alone, so watchers are not woken. Load figures alone change on
almost every heartbeat; they are recorded at once (``engines()``) but published in
the routing table by at most one revision per ``load_publish_interval_s`` (1 s by
default), either on the next report after the interval or by :meth:`Registry.expire`.
The table of a revision is built once, lazily, on first read, so it may carry load
figures a little newer than the revision; load is advisory, and building it eagerly
on every report would cost O(engines) per heartbeat.
GPU and host telemetry never bumps the revision: it is not part of the table.
A registry that follows a shared store instead: :class:`~._mirrored.MirroredRegistry`.

Lost hosts: when an agent's lease lapses its engines leave the table at once and are
shown to operators as ``ERROR`` with reason ``"host lost"`` (the agent's last reported
state is kept underneath and comes back with its next report); after
``lost_engine_retention_s`` they are deleted. The agent itself stays listed as lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from sage.unified.coordinator._errors import (
    ConflictError,
    NotFoundError,
    StaleIncarnationError,
)
from sage.unified.coordinator._report_checks import check_engines
from sage.unified.coordinator._table import (
    AgentRecord,
    ExpireOutcome,
    ReportOutcome,
    TableInputs,
    build_table,
)
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import (
    AgentReport,
    AgentSummary,
    EngineInfo,
    EngineLoad,
    GpuInfo,
    HostMetrics,
    RoutingTable,
    Runtime,
)
from sage.unified.sdk.states import ALLOWED_TRANSITIONS, EngineState

__all__ = [
    "HOST_LOST_REASON",
    "AgentRecord",
    "ExpireOutcome",
    "Registry",
    "ReportOutcome",
    "TableInputs",
    "build_table",
]

HOST_LOST_REASON = "host lost"
_NO_LOAD = EngineLoad()


@dataclass(slots=True)
class _Agent:
    agent_id: str
    host: str
    url: str
    version: str = ""
    incarnation: int = 0
    port_range: tuple[int, int] = (8900, 8999)
    gpu_free_runtimes: list[Runtime] = field(default_factory=list)
    gpus: list[GpuInfo] = field(default_factory=list)
    gpu_error: str | None = None
    host_metrics: HostMetrics | None = None
    lease_expires_at: float = 0.0
    last_report_at: float | None = None
    lost_since: float | None = None
    engine_ids: set[str] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)


def _significant(engine: EngineInfo) -> EngineInfo:
    """The engine without the fields that change on every heartbeat."""
    return msgspec.structs.replace(engine, load=_NO_LOAD, last_heartbeat=None)


class Registry:
    """Agents, leases and engines; produces the routing table.

    Not thread-safe; the service calls it from one event loop.

    Args:
        clock: time source; leases use ``clock.monotonic()``.
        lease_ttl_s: how long a report keeps an agent alive.
        lost_engine_retention_s: how long the engines of a lost host stay listed.
        load_publish_interval_s: the least time between two load-only revisions.
        revision: the revision to continue from (persisted across restarts).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        lease_ttl_s: float = 10.0,
        lost_engine_retention_s: float = 300.0,
        load_publish_interval_s: float = 1.0,
        revision: int = 0,
    ) -> None:
        self._clock = clock
        self.lease_ttl_s = lease_ttl_s
        self.lost_engine_retention_s = lost_engine_retention_s
        self.load_publish_interval_s = load_publish_interval_s
        self._revision = revision
        self._agents: dict[str, _Agent] = {}
        self._engines: dict[str, EngineInfo] = {}
        self._table: RoutingTable | None = None
        self._load_dirty = False
        self._last_load_publish = float("-inf")

    # ----------------------------------------------------------------- queries

    @property
    def revision(self) -> int:
        return self._revision

    def routing_table(self) -> RoutingTable:
        """READY engines of live agents (and healthy registered engines), at the revision."""
        if self._table is None or self._table.revision != self._revision:
            self._table = build_table(self.table_inputs())
        return self._table

    def table_inputs(self) -> TableInputs:
        """What :func:`build_table` needs, gathered cheaply (no table objects built).

        The expensive part, building thousands of rows, can then run off the event
        loop (the publisher does that and keeps the result).
        """
        lost = {a.agent_id for a in self._agents.values() if a.lost_since is not None}
        routable = [
            e
            for e in self._engines.values()
            if e.state is EngineState.READY
            and (e.agent_id is None or (e.agent_id in self._agents and e.agent_id not in lost))
        ]
        served = {e.model for e in routable}
        unavailable = sorted(
            {e.model for e in self._engines.values() if e.state is not EngineState.STOPPED} - served
        )
        return TableInputs(self._revision, routable, self._clock.time(), unavailable)

    def engines(self) -> list[EngineInfo]:
        """Every engine in every state, as shown to operators (lost hosts: ERROR, "host lost")."""
        return [self._view(e) for e in sorted(self._engines.values(), key=lambda e: e.id)]

    def engine(self, engine_id: str) -> EngineInfo:
        """One engine as shown to operators. Raises :class:`NotFoundError`."""
        try:
            return self._view(self._engines[engine_id])
        except KeyError:
            raise NotFoundError(
                f"engine {engine_id!r} is not known", code="engine_not_found"
            ) from None

    def has_engine(self, engine_id: str) -> bool:
        return engine_id in self._engines

    def agent_summaries(self) -> list[AgentSummary]:
        now = self._clock.monotonic()
        return [
            self._summary(a, now) for a in sorted(self._agents.values(), key=lambda a: a.agent_id)
        ]

    def agent_summary(self, agent_id: str) -> AgentSummary:
        try:
            return self._summary(self._agents[agent_id], self._clock.monotonic())
        except KeyError:
            raise NotFoundError(
                f"agent {agent_id!r} is not known", code="agent_not_found"
            ) from None

    def agent_records(self) -> list[AgentRecord]:
        return [
            AgentRecord(a.agent_id, a.url, a.host, a.incarnation) for a in self._agents.values()
        ]

    def is_lost(self, agent_id: str) -> bool:
        agent = self._agents.get(agent_id)
        return agent is None or agent.lost_since is not None

    # ---------------------------------------------------------------- commands

    def restore_agent(self, record: AgentRecord, grace_s: float) -> None:
        """Re-arm a persisted agent's lease for TTL + ``grace_s`` (after a coordinator start).

        A restart must never expire a healthy host: its agent gets a full lease plus
        the grace to send its next report.
        """
        self._agents[record.agent_id] = _Agent(
            agent_id=record.agent_id,
            host=record.host,
            url=record.url,
            incarnation=record.incarnation,
            lease_expires_at=self._clock.monotonic() + self.lease_ttl_s + grace_s,
        )

    def apply_report(self, report: AgentReport) -> ReportOutcome:
        """Replace what is known about ``report.agent_id`` with the snapshot.

        The agent's view of its own engines wins: its engines missing from the
        snapshot are removed. The lease is renewed on the coordinator's clock.

        Raises:
            StaleIncarnationError: the agent incarnation is lower than the last
                accepted one, or an engine's incarnation is lower than the known one.
            ReportRejectedError: an engine is on another host, outside the port range,
                or its URL does not point at its host and port.
            ConflictError: an engine id belongs to another live agent or to a
                registered engine.
        """
        self.check_report(report)
        return self._replace(report)

    def check_report(self, report: AgentReport) -> None:
        """Raise what :meth:`apply_report` would raise, changing nothing."""
        agent = self._agents.get(report.agent_id)
        if agent is not None and report.incarnation < agent.incarnation:
            raise StaleIncarnationError(
                f"agent {report.agent_id!r} incarnation {report.incarnation} is older than "
                f"the accepted {agent.incarnation}"
            )
        check_engines(report, self._engines, self.is_lost)

    def _replace(self, report: AgentReport) -> ReportOutcome:
        now = self._clock.monotonic()
        agent = self._agents.get(report.agent_id)
        agent_changed = agent is None or (agent.url, agent.host, agent.incarnation) != (
            report.url,
            report.host,
            report.incarnation,
        )
        changed = False
        if agent is None:
            agent = _Agent(agent_id=report.agent_id, host=report.host, url=report.url)
            self._agents[report.agent_id] = agent
        elif agent.lost_since is not None:
            changed = bool(agent.engine_ids)  # its engines come back into the table
        if agent.host != report.host:
            changed = changed or bool(agent.engine_ids)
        self._update_agent(agent, report, now)
        merged, load_changed, seen, notes = self._merge_engines(agent, report)
        changed = changed or merged
        if load_changed:
            self._load_dirty = True
        if changed:
            self._bump()
        elif self._load_dirty and now - self._last_load_publish >= self.load_publish_interval_s:
            self._bump()
            changed = True
        return ReportOutcome(
            changed=changed,
            revision=self._revision,
            agent_changed=agent_changed,
            engine_ids=sorted(seen),
            notes=notes,
        )

    def _update_agent(self, agent: _Agent, report: AgentReport, now: float) -> None:
        agent.host = report.host
        agent.url = report.url
        agent.version = report.version
        agent.incarnation = report.incarnation
        agent.port_range = report.port_range
        agent.gpus = report.gpus
        agent.gpu_error = report.gpu_error
        agent.gpu_free_runtimes = report.gpu_free_runtimes
        agent.host_metrics = report.host_metrics
        agent.labels = report.labels
        agent.lease_expires_at = now + self.lease_ttl_s
        agent.last_report_at = self._clock.time()
        agent.lost_since = None

    def _merge_engines(
        self, agent: _Agent, report: AgentReport
    ) -> tuple[bool, bool, set[str], list[str]]:
        """Replace the agent's engines with the snapshot's: (changed, load changed, ids,
        notes)."""
        changed = False
        notes: list[str] = []
        load_changed = False
        seen: set[str] = set()
        for reported in report.engines:
            seen.add(reported.id)
            if reported.agent_id != report.agent_id:
                reported = msgspec.structs.replace(reported, agent_id=report.agent_id)
            if reported.last_heartbeat is None:
                reported.last_heartbeat = agent.last_report_at
            known = self._engines.get(reported.id)
            if known is not None and known.agent_id != report.agent_id:
                # Taken over from a lost agent: that agent's retention must not delete it.
                if known.agent_id is not None and (old := self._agents.get(known.agent_id)):
                    old.engine_ids.discard(reported.id)
                changed = True
            if known is None:
                changed = True
            else:
                if (
                    known.state is not reported.state
                    and (known.state, reported.state) not in ALLOWED_TRANSITIONS
                ):
                    notes.append(
                        f"engine {reported.id}: {known.state.value} -> {reported.state.value} "
                        "is not a single allowed transition (recorded)"
                    )
                if _significant(known) == _significant(reported):
                    if known.load != reported.load and reported.state is EngineState.READY:
                        load_changed = True
                    # Keep the long-lived object and swap only its (GC-untracked) load: the
                    # decoded copy dies young, so the steady heartbeat stream promotes
                    # nothing to the old GC generation (full collections took ~60-100 ms
                    # with 8,000 engines replaced every 3 s).
                    known.load = reported.load
                    known.last_heartbeat = reported.last_heartbeat
                    continue
                changed = True
            self._engines[reported.id] = reported
        for gone in agent.engine_ids - seen:
            if self._engines.pop(gone, None) is not None:
                changed = True
        agent.engine_ids = seen
        return changed, load_changed, seen, notes

    def expire(self) -> ExpireOutcome:
        """Mark agents whose lease lapsed as lost; delete their engines after retention.

        Also publishes pending load-only changes once the publish interval has passed.
        Call about once a second.
        """
        now = self._clock.monotonic()
        outcome = ExpireOutcome(changed=False, revision=self._revision)
        for agent in self._agents.values():
            if agent.lost_since is None:
                if now >= agent.lease_expires_at:
                    agent.lost_since = now
                    outcome.lost_agents.append(agent.agent_id)
                    if agent.engine_ids:
                        outcome.changed = True
            elif agent.engine_ids and now - agent.lost_since >= self.lost_engine_retention_s:
                for engine_id in sorted(agent.engine_ids):
                    if self._engines.pop(engine_id, None) is not None:
                        outcome.deleted_engines.append(engine_id)
                agent.engine_ids = set()
                outcome.changed = True
        if outcome.changed or (
            self._load_dirty and now - self._last_load_publish >= self.load_publish_interval_s
        ):
            self._bump()
            outcome.changed = True
        outcome.revision = self._revision
        return outcome

    def put_registered(self, engine: EngineInfo) -> bool:
        """Add or replace an engine no agent manages; returns whether the revision went up.

        Raises:
            ConflictError: the id belongs to an agent's engine.
        """
        engine.agent_id = None
        known = self._engines.get(engine.id)
        if known is not None and known.agent_id is not None:
            raise ConflictError(
                f"engine id {engine.id!r} belongs to agent {known.agent_id!r}", code="engine_exists"
            )
        self._engines[engine.id] = engine
        if known is not None and _significant(known) == _significant(engine):
            return False
        self._bump()
        return True

    def set_state(self, engine_id: str, state: EngineState, reason: str) -> bool:
        """Record a probe result for a registered engine; returns whether the revision went up."""
        known = self._engines.get(engine_id)
        if known is None:
            raise NotFoundError(f"engine {engine_id!r} is not known", code="engine_not_found")
        if known.state is state and known.reason == reason:
            return False
        self._engines[engine_id] = msgspec.structs.replace(
            known, state=state, reason=reason, state_changed_at=self._clock.time()
        )
        self._bump()
        return True

    def remove_engine(self, engine_id: str) -> EngineInfo:
        """Remove an engine (registered engines; agent engines come back with the next report)."""
        known = self._engines.pop(engine_id, None)
        if known is None:
            raise NotFoundError(f"engine {engine_id!r} is not known", code="engine_not_found")
        if known.agent_id is not None and (agent := self._agents.get(known.agent_id)) is not None:
            agent.engine_ids.discard(engine_id)
        self._bump()
        return known

    def registered_engines(self) -> list[EngineInfo]:
        return [e for e in self._engines.values() if e.agent_id is None]

    def agent_of(self, engine_id: str) -> tuple[str, str] | None:
        """``(agent_id, agent_url)`` managing an engine, or ``None`` for a registered engine."""
        known = self._engines.get(engine_id)
        if known is None:
            raise NotFoundError(f"engine {engine_id!r} is not known", code="engine_not_found")
        if known.agent_id is None:
            return None
        agent = self._agents.get(known.agent_id)
        if agent is None:
            return None
        return agent.agent_id, agent.url

    def live_agents(self) -> Iterable[tuple[AgentSummary, list[EngineInfo]]]:
        """Agents (lost ones included, flagged) with their engines, for placement."""
        now = self._clock.monotonic()
        for agent in sorted(self._agents.values(), key=lambda a: a.agent_id):
            yield (
                self._summary(agent, now),
                [self._engines[i] for i in sorted(agent.engine_ids) if i in self._engines],
            )

    # ----------------------------------------------------------------- helpers

    def _bump(self) -> None:
        self._revision += 1
        self._load_dirty = False
        self._last_load_publish = self._clock.monotonic()

    def _host_lost(self, engine: EngineInfo) -> bool:
        if engine.agent_id is None:
            return False
        agent = self._agents.get(engine.agent_id)
        return agent is None or agent.lost_since is not None

    def _view(self, engine: EngineInfo) -> EngineInfo:
        if self._host_lost(engine):
            return msgspec.structs.replace(engine, state=EngineState.ERROR, reason=HOST_LOST_REASON)
        return engine

    def _summary(self, agent: _Agent, now: float) -> AgentSummary:
        return AgentSummary(
            agent_id=agent.agent_id,
            host=agent.host,
            url=agent.url,
            version=agent.version,
            incarnation=agent.incarnation,
            lost=agent.lost_since is not None,
            lease_expires_in_s=self._lease_left(agent, now),
            last_report_at=agent.last_report_at,
            engines=len(agent.engine_ids),
            gpus=agent.gpus,
            gpu_error=agent.gpu_error,
            host_metrics=agent.host_metrics,
            gpu_free_runtimes=agent.gpu_free_runtimes,
            labels=agent.labels,
        )

    def _lease_left(self, agent: _Agent, now: float) -> float:
        return max(0.0, agent.lease_expires_at - now)
