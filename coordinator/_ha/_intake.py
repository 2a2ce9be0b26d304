"""Agents' reports in a highly available control plane: checked here, written to etcd.

A report is checked against this gateway's mirror (incarnation, engines on the agent's
own host and ports, no one else's engine ids) as the local coordinator checks it, then
written with a compare-and-swap on the snapshot key's revision as this gateway knows it,
so that a report checked against a stale mirror is never written over a newer one: the
gateway catches up with etcd and checks again. What is written, and when, is
:func:`~._records.plan_report_write`; the agent's lease is renewed by the
:class:`~._leases.LeaseKeeper`. The reply to a report that changed something is sent once
the write is in etcd (a majority of its members has it) and in this gateway's mirror,
so a report that was answered 200 is never lost to a gateway or leader change. A write
made only because the telemetry is due is sent in the background (one at a time per
agent): nothing depends on it, and the agent's reply does not wait for it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sage.unified.coordinator._addresses import AddressPolicy
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._errors import (
    ConflictError,
    ControlPlaneUnavailableError,
    CoordinatorError,
    InvalidRequestError,
)
from sage.unified.coordinator._etcd import Compare, EtcdClient, PutOp, TxnResult
from sage.unified.coordinator._ha._batch import TxnBatcher
from sage.unified.coordinator._ha._leases import LeaseKeeper
from sage.unified.coordinator._ha._mirror import StateMirror, StoreHealth
from sage.unified.coordinator._ha._records import (
    AliveMarker,
    KeySpace,
    KnownAgent,
    StoredAgent,
    WritePlan,
    plan_report_write,
    significant,
)
from sage.unified.coordinator._metrics import CoordinatorMetrics
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import AgentReport, AgentReportReply, encode

__all__ = ["EtcdReportIntake"]

log = logging.getLogger("sage.unified.coordinator")

_ATTEMPTS = 3
_CATCH_UP_S = 2.0


class EtcdReportIntake:
    """Applies agents' reports through etcd.

    Args:
        etcd: the client (lease grants).
        batcher: joins the snapshot writes of concurrent reports.
        keys: the deployment's key space.
        mirror: this gateway's mirror of the state (checks are made against it).
        leases: renews the agents' leases.
        health: etcd's reachability (a report is refused at once while it is down).
        settings: lease TTL, heartbeat and telemetry intervals.
        clock: the time written with each snapshot.
        addresses: the policy an agent's host must pass.
        auditor: rejected reports are audited.
        metrics: report counters and latency.
        identity: this coordinator, written with each snapshot.
        spawn: runs a background write (a task group's ``start_soon``).
    """

    def __init__(
        self,
        etcd: EtcdClient,
        batcher: TxnBatcher,
        keys: KeySpace,
        mirror: StateMirror,
        leases: LeaseKeeper,
        health: StoreHealth,
        *,
        settings: CoordinatorSettings,
        clock: Clock,
        addresses: AddressPolicy,
        auditor: Auditor,
        metrics: CoordinatorMetrics,
        identity: str,
        spawn: Callable[..., Any],
    ) -> None:
        self._spawn: Callable[[Callable[..., Awaitable[Any]], Any], Any] = spawn
        self._telemetry_writes: set[str] = set()
        self._etcd = etcd
        self._batcher = batcher
        self._keys = keys
        self._mirror = mirror
        self._leases = leases
        self._health = health
        self._settings = settings
        self._clock = clock
        self._addresses = addresses
        self._auditor = auditor
        self._metrics = metrics
        self._identity = identity
        self._allowed_hosts: set[str] = set()
        self._lease_ttl = max(1, math.ceil(settings.lease_ttl_s))

    async def report(self, agent_id: str, report: AgentReport) -> AgentReportReply:
        """Check a snapshot and write what changed to etcd; renew the agent's lease.

        Raises:
            InvalidRequestError: ``report.agent_id`` differs from the path id.
            ControlPlaneUnavailableError: etcd cannot be reached (503: the agent tries
                another gateway, and its engines go on serving).
            UrlPolicyError, StaleIncarnationError, ReportRejectedError, ConflictError:
                as the local coordinator (audited).
        """
        started = time.perf_counter()
        try:
            if report.agent_id != agent_id:
                raise InvalidRequestError(
                    f"report is for agent {report.agent_id!r} but was sent to {agent_id!r}",
                    param="agent_id",
                )
            self._health.require()
            if report.host not in self._allowed_hosts:
                await self._addresses.check(report.host, report.port_range[0])
                self._allowed_hosts.add(report.host)
            await self._write(report)
        except ControlPlaneUnavailableError:
            self._metrics.reports.labels(result="unavailable").inc()
            raise
        except CoordinatorError as exc:
            self._metrics.reports.labels(result="rejected").inc()
            await self._auditor.record(
                f"agent:{agent_id}", "report", agent_id, f"rejected: {exc.message}"
            )
            raise
        self._metrics.reports.labels(result="accepted").inc()
        self._metrics.report_latency.observe(time.perf_counter() - started)
        return AgentReportReply(
            lease_ttl_s=self._settings.lease_ttl_s,
            heartbeat_interval_s=self._settings.heartbeat_interval_s,
            revision=self._mirror.state.registry.revision,
        )

    async def _write(self, report: AgentReport) -> None:
        state = self._mirror.state
        now_significant = significant(report)
        for _ in range(_ATTEMPTS):
            state.registry.check_report(report)
            known = state.known_agent(report.agent_id, self._leases.expired)
            plan = plan_report_write(
                known,
                now_significant,
                now=self._clock.time(),
                telemetry_interval_s=self._settings.telemetry_publish_interval_s,
            )
            if not plan.writes or plan.telemetry_only:
                assert plan.renew_lease is not None
                self._leases.renew(plan.renew_lease)
                if plan.telemetry_only and report.agent_id not in self._telemetry_writes:
                    self._telemetry_writes.add(report.agent_id)
                    self._spawn(self._write_telemetry, (report, known, plan))
                return
            with self._health.guard():
                result = await self._commit(report, known, plan)
            if result.succeeded:
                if plan.renew_lease is not None:
                    self._leases.renew(plan.renew_lease)
                # Read your writes: the reply's revision, and this gateway's table,
                # include the change (the watch delivers it within milliseconds).
                await self._mirror.wait_for(result.header.revision, _CATCH_UP_S)
                return
            # Another gateway wrote this agent since our mirror saw it: catch up, decide again.
            await self._mirror.wait_for(result.header.revision, _CATCH_UP_S)
        raise ConflictError(
            f"agent {report.agent_id!r} is being reported through several coordinators at "
            "once; its next report will be taken",
            code="report_conflict",
        )

    async def _write_telemetry(self, job: tuple[AgentReport, KnownAgent | None, WritePlan]) -> None:
        report, known, plan = job
        try:
            await self._commit(report, known, plan)  # a conflict: the next one is due at once
        except Exception as exc:  # best effort: the next report tries again
            log.debug("telemetry of agent %s not written: %s", report.agent_id, exc)
        finally:
            self._telemetry_writes.discard(report.agent_id)

    async def _commit(
        self, report: AgentReport, known: KnownAgent | None, plan: WritePlan
    ) -> TxnResult:
        agent_key = self._keys.agent(report.agent_id)
        compares = [Compare.mod_revision(agent_key, "==", known.record_revision if known else 0)]
        ops: list[PutOp] = []
        if plan.put_record:
            stored = StoredAgent(report=report, written_at=self._clock.time(), by=self._identity)
            ops.append(PutOp(agent_key, encode(stored)))
        if plan.grant_lease:
            alive_key = self._keys.alive(report.agent_id)
            lease = await self._etcd.lease_grant(self._lease_ttl)
            compares.append(Compare.version(alive_key, "==", 0))
            marker = AliveMarker(incarnation=report.incarnation, by=self._identity)
            ops.append(PutOp(alive_key, encode(marker), lease=lease.id))
            log.info("agent %s: new etcd lease %x", report.agent_id, lease.id)
        return await self._batcher.txn(compares, ops)
