"""Agents' reports and their leases: apply snapshots, expire lapsed leases, settle after a
restart.

An I/O shell around the pure :class:`~._registry.Registry`: it checks the agent's host
against the address policy, applies the snapshot, persists what changed and publishes a
new revision. The lease sweep runs every ``sweep_interval_s`` and survives errors (logged,
then the next interval).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Container, Iterable

import anyio

from sage.unified.coordinator._addresses import AddressPolicy
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._errors import CoordinatorError, InvalidRequestError
from sage.unified.coordinator._metrics import CoordinatorMetrics
from sage.unified.coordinator._persistence import AgentRecordWriter
from sage.unified.coordinator._registry import AgentRecord, Registry
from sage.unified.coordinator._retention import AgedEngines
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.logsafe import safe_log_value
from sage.unified.sdk.models import AgentReport, AgentReportReply

__all__ = ["Publish", "ReportIntake"]

log = logging.getLogger("sage.unified.coordinator")

Publish = Callable[[int], Awaitable[None]]
"""Persist the revision mark for a new revision and wake the table's watchers."""


class ReportIntake:
    """Applies agent reports and keeps their leases.

    Args:
        registry: the registry (changed only here and in the engine commands).
        settings: lease TTL, heartbeat interval, sweep interval.
        clock: lease time.
        addresses: the policy an agent's host must pass.
        auditor: where rejected reports and lost agents are recorded.
        metrics: report counters and latency.
        writer: persists changed agent records.
        publish: called with the revision after every change.
        on_engines_seen: told which engine ids a report carried (pending starts end there).
        restored_agents: agents known from the store; until each reports again, or one
            lease TTL passed, the coordinator is settling.
        deployments: the names of the deployments that exist (their replicas do not age
            out of the listings).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        settings: CoordinatorSettings,
        clock: Clock,
        addresses: AddressPolicy,
        auditor: Auditor,
        metrics: CoordinatorMetrics,
        writer: AgentRecordWriter,
        publish: Publish,
        on_engines_seen: Callable[[Iterable[str]], Awaitable[None]],
        restored_agents: Iterable[str] = (),
        deployments: Callable[[], Container[str]] = frozenset,
    ) -> None:
        self._deployments = deployments
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._addresses = addresses
        self._auditor = auditor
        self._metrics = metrics
        self._writer = writer
        self._publish = publish
        self._on_engines_seen = on_engines_seen
        self._allowed_hosts: set[str] = set()
        self._settling_agents = set(restored_agents)
        self._settle_deadline = clock.monotonic() + settings.lease_ttl_s
        self._aged = AgedEngines(settings.stopped_engine_retention_s)

    @property
    def settling(self) -> bool:
        """Just restarted, and some agents it knew have not reported again yet.

        For at most one lease TTL. Meanwhile the routing table lacks their engines, so
        ``/v1/management/backends`` answers 503 (gateways keep their last table) and an
        embedded gateway answers 503 rather than 404 for a model it cannot see yet.
        """
        if not self._settling_agents:
            return False
        if self._clock.monotonic() >= self._settle_deadline:
            self._settling_agents.clear()
            return False
        return True

    async def report(self, agent_id: str, report: AgentReport) -> AgentReportReply:
        """Apply an agent snapshot and renew its lease.

        Raises:
            InvalidRequestError: ``report.agent_id`` differs from the path id.
            UrlPolicyError: the agent's host fails the network policy.
            StaleIncarnationError, ReportRejectedError, ConflictError: see
                :meth:`Registry.apply_report` (audited).
        """
        started = time.perf_counter()
        try:
            if report.agent_id != agent_id:
                raise InvalidRequestError(
                    f"report is for agent {report.agent_id!r} but was sent to {agent_id!r}",
                    param="agent_id",
                )
            if report.host not in self._allowed_hosts:
                # The gateway will send prompts to this host's engines: it must pass
                # the same network allow-list as a directly registered engine.
                await self._addresses.check(report.host, report.port_range[0])
                self._allowed_hosts.add(report.host)
            outcome = self._registry.apply_report(report)
            self._settling_agents.discard(agent_id)
        except CoordinatorError as exc:
            self._metrics.reports.labels(result="rejected").inc()
            await self._auditor.record(
                f"agent:{agent_id}", "report", agent_id, f"rejected: {exc.message}"
            )
            raise
        for note in outcome.notes:
            log.info("agent %s: %s", safe_log_value(agent_id), safe_log_value(note, 512))
        if outcome.agent_changed:
            self._writer.put(
                AgentRecord(report.agent_id, report.url, report.host, report.incarnation)
            )
        await self._on_engines_seen(outcome.engine_ids)
        if outcome.changed:
            await self._publish(outcome.revision)
        self._metrics.reports.labels(result="accepted").inc()
        self._metrics.report_latency.observe(time.perf_counter() - started)
        return AgentReportReply(
            lease_ttl_s=self._settings.lease_ttl_s,
            heartbeat_interval_s=self._settings.heartbeat_interval_s,
            revision=outcome.revision,
        )

    async def sweep_loop(self) -> None:
        """Every ``sweep_interval_s``: expire lapsed leases; until cancelled."""
        while True:
            await anyio.sleep(self._settings.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("lease sweep failed; retrying next interval")

    async def sweep(self) -> None:
        """Mark agents whose lease lapsed as lost, delete engines past retention, audit those
        that age out of the listings, publish."""
        outcome = self._registry.expire()
        for agent_id in outcome.lost_agents:
            await self._auditor.record("coordinator", "agent.lost", agent_id, "lease expired")
        aged = self._aged.newly_aged(
            self._registry.engines(), self._clock.time(), self._deployments()
        )
        for engine in aged:
            await self._auditor.record(
                "coordinator",
                "engine.aged_out",
                engine.id,
                f"{engine.state.value} on {engine.agent_id} since {engine.state_changed_at:.0f} "
                f"({engine.reason}); no longer listed",
            )
        if outcome.deleted_engines:
            log.info("deleted engines of lost hosts: %s", ", ".join(outcome.deleted_engines))
        if outcome.changed:
            await self._publish(outcome.revision)
