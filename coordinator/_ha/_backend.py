"""The etcd backend of the coordinator: :class:`EtcdBackend` (see :mod:`sage.unified.coordinator._backend`).

One per gateway (or standalone coordinator) of a highly available deployment. It runs:

- the state mirror (read, then watch) feeding a
  :class:`~sage.unified.coordinator._mirrored.MirroredRegistry`, and the table publisher;
- the store probe (:class:`~._mirror.StoreHealth`) and the batched lease renewals;
- the election, and on the leader: the start executor, the prober of registered engines,
  the upkeep and the deployments' reconciler, plus the caller's leader tasks.

Deployments and cordons are etcd keys too (:mod:`._fleet`): every gateway's fleet is
reloaded from its mirror, so any gateway answers the fleet API and plans statuses.

Reports and commands go through :class:`~._intake.EtcdReportIntake` and
:class:`~._commands.EtcdEngineCommands`. Entering does not wait for etcd longer than one
call's deadline: a gateway started while etcd is down serves (and says it is not ready)
until etcd answers.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Self

import anyio
import anyio.abc
import httpx

from sage.unified.coordinator._addresses import AddressPolicy
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._backend import LeaderTask, StoreStatus, keep_running
from sage.unified.coordinator._etcd import EtcdClient, EtcdError, EtcdTls
from sage.unified.coordinator._fleet import Fleet
from sage.unified.coordinator._fleet_service import FleetService
from sage.unified.coordinator._ha._audit import EtcdAuditStore
from sage.unified.coordinator._ha._batch import TxnBatcher
from sage.unified.coordinator._ha._commands import EtcdEngineCommands
from sage.unified.coordinator._ha._fleet import EtcdFleetStore, fleet_records
from sage.unified.coordinator._ha._housekeeping import Housekeeper, RegisteredStateWriter
from sage.unified.coordinator._ha._intake import EtcdReportIntake
from sage.unified.coordinator._ha._leader import LeaderElection
from sage.unified.coordinator._ha._leases import LeaseKeeper
from sage.unified.coordinator._ha._mirror import StateMirror, StoreHealth
from sage.unified.coordinator._ha._records import KeySpace
from sage.unified.coordinator._ha._starts import StartExecutor
from sage.unified.coordinator._ha._view import MirrorState
from sage.unified.coordinator._metrics import CoordinatorMetrics
from sage.unified.coordinator._mirrored import MirroredRegistry
from sage.unified.coordinator._prober import RegisteredEngineProber
from sage.unified.coordinator._publisher import TablePublisher
from sage.unified.coordinator._reconciler import Reconciler
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import StartRequestRecord
from sage.unified.sdk.client import async_http_pool
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import (
    AgentReport,
    AgentReportReply,
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
    RegisterEngineRequest,
)

__all__ = ["EtcdBackend", "etcd_client_for"]

log = logging.getLogger("sage.unified.coordinator")


def etcd_client_for(settings: CoordinatorSettings) -> EtcdClient:
    """The etcd client the settings describe (URL, TLS files, user and password).

    Raises:
        EtcdConfigError: bad URL, TLS files or credentials.
        ConfigError: the password file cannot be read.
    """
    target = settings.etcd_target()
    tls = None
    if target.tls and (settings.etcd_ca_file or settings.etcd_cert_file):
        tls = EtcdTls(settings.etcd_ca_file, settings.etcd_cert_file, settings.etcd_key_file)
    return EtcdClient(
        target,
        timeout_s=settings.etcd_timeout_s,
        tls=tls,
        username=settings.etcd_username,
        password=settings.etcd_password_value(),
    )


class EtcdBackend:
    """The coordinator's state in etcd, shared with the deployment's other coordinators.

    Args:
        settings: configuration (``store`` is the etcd URL).
        clock: timestamps.
        metrics: report counters.
        addresses: the network policy of agents' hosts and registered URLs.
        http_client: the pool for agent calls and probes (``None``: one of its own).
        leader_tasks: run while this coordinator leads (read when entering).
        etcd: a client to use instead of one built from the settings (tests).
    """

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        clock: Clock,
        metrics: CoordinatorMetrics,
        addresses: AddressPolicy,
        http_client: httpx.AsyncClient | None,
        leader_tasks: Sequence[LeaderTask] = (),
        etcd: EtcdClient | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.identity = f"{socket.gethostname()}:{settings.port}/{os.getpid()}"
        self.etcd = etcd or etcd_client_for(settings)
        self.keys = KeySpace(settings.etcd_prefix)
        self.health = StoreHealth(str(self.etcd.target))
        self._registry = MirroredRegistry(
            clock,
            lease_ttl_s=settings.lease_ttl_s,
            load_publish_interval_s=settings.load_publish_interval_s,
        )
        self.publisher = TablePublisher(self._registry, settings.watch_coalesce_s)
        self.state = MirrorState(self.keys, self._registry)
        self.mirror = StateMirror(
            self.etcd, self.keys, self.state, self.health, self._state_changed,
            settings.etcd_timeout_s,
        )  # fmt: skip
        self.batcher = TxnBatcher(self.etcd, settings.etcd_timeout_s)
        self.audit_store = EtcdAuditStore(
            self.etcd, self.batcher, self.keys, settings.etcd_timeout_s
        )
        self.auditor = Auditor(self.audit_store, clock)
        ttl = max(1, math.ceil(settings.lease_ttl_s))
        self.leases = LeaseKeeper(
            self.etcd,
            self.health,
            round_s=min(1.0, max(0.1, ttl / 10)),
            timeout_s=settings.etcd_timeout_s,
        )
        self._metrics = metrics
        self._addresses = addresses
        self._given_client = http_client
        self._leader_tasks = leader_tasks
        self.election = LeaderElection(
            self.etcd, self.keys.leader, self.identity, settings.leader_lease_ttl_s, ()
        )
        self._fleet = Fleet(
            EtcdFleetStore(self.etcd, self.keys, self.mirror, self.health),
            self.auditor,
            clock,
            changed=self._kick_reconciler,
        )
        self.intake: EtcdReportIntake | None = None
        self.commands: EtcdEngineCommands | None = None
        self._reconciler: Reconciler | None = None
        self._fleet_service: FleetService | None = None
        self._stack: AsyncExitStack | None = None

    @property
    def registry(self) -> MirroredRegistry:
        return self._registry

    @property
    def fleet(self) -> FleetService:
        if self._fleet_service is None:
            raise RuntimeError("Coordinator is not started")
        return self._fleet_service

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            raise RuntimeError("Coordinator is not started")
        return self._reconciler

    @property
    def settling(self) -> bool:
        return False

    @property
    def store_status(self) -> StoreStatus:
        return self.health.status()

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    @property
    def ready(self) -> bool:
        """Whether the state was read from etcd at least once."""
        return self.mirror.loaded.is_set()

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self.etcd.aclose)
            http = self._given_client
            if http is None:
                http = await stack.enter_async_context(async_http_pool())
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            self._build(http, task_group)
            try:
                await self.mirror.load()
            except EtcdError as exc:
                self.health.failed(exc)
                log.warning("etcd at %s cannot be read yet (%s); retrying", self.etcd.target, exc)
            self.publisher.open()
            probe = functools.partial(self.health.probe, self.etcd, self.keys.state, 2.0)
            for name, loop in (
                ("etcd writer", self.batcher.run),
                ("etcd mirror", self.mirror.run),
                ("table publisher", self.publisher.run),
                ("etcd health probe", probe),
                ("lease keeper", self.leases.run),
                ("leader election", self.election.run),
            ):
                task_group.start_soon(keep_running, name, loop)
            self._stack = stack.pop_all()
        log.info("coordinator %s started on etcd %s", self.identity, self.etcd.target)
        return self

    def _build(self, http: httpx.AsyncClient, task_group: anyio.abc.TaskGroup) -> None:
        settings = self.settings
        self.intake = EtcdReportIntake(
            self.etcd, self.batcher, self.keys, self.mirror, self.leases, self.health,
            settings=settings, clock=self.clock, addresses=self._addresses,
            auditor=self.auditor, metrics=self._metrics, identity=self.identity,
            spawn=task_group.start_soon,
        )  # fmt: skip
        self.commands = EtcdEngineCommands(
            self.etcd, self.keys, self.mirror, self.health,
            settings=settings, clock=self.clock, addresses=self._addresses,
            auditor=self.auditor, http=http, is_cordoned=self._fleet.is_cordoned,
        )  # fmt: skip
        self._reconciler = Reconciler(
            self._registry, self._fleet, self.commands, _PendingStarts(self),
            settings=settings, clock=self.clock, auditor=self.auditor,
            # A leader that cannot reach etcd decides nothing (it will not lead for long).
            settling=lambda: not self.health.reachable,
        )  # fmt: skip
        self._fleet_service = FleetService(
            self._registry, self._fleet, self._reconciler, self.commands, self.auditor,
            self.clock,
        )  # fmt: skip
        fence = self.election.fence
        prober = RegisteredEngineProber(
            self._registry,
            settings=settings,
            addresses=self._addresses,
            http=http,
            publish=self._no_publish,
            notify=self.publisher.notify,
            sink=RegisteredStateWriter(self.etcd, self.keys, self.mirror, fence, self.clock),
        )
        starts = StartExecutor(
            self.etcd, self.keys, self.mirror, self.commands, fence,
            settings=settings, clock=self.clock, auditor=self.auditor,
        )  # fmt: skip
        upkeep = Housekeeper(
            self.etcd, self.keys, self.mirror, self.audit_store, fence,
            settings=settings, clock=self.clock,
        )  # fmt: skip
        self.election.tasks = [starts, prober, upkeep, self._reconciler, *self._leader_tasks]

    async def _no_publish(self, revision: int) -> None:
        """The prober's sink writes to etcd; the mirror publishes what comes back."""

    def _state_changed(self) -> None:
        """The mirror applied changes: wake the watchers, reload the fleet, wake the
        reconciler."""
        self.publisher.notify()
        self._fleet.load(*fleet_records(self.state))
        self._kick_reconciler()

    def _kick_reconciler(self) -> None:
        if self._reconciler is not None:
            self._reconciler.kick()

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def _running(self) -> tuple[EtcdReportIntake, EtcdEngineCommands]:
        if self.intake is None or self.commands is None or self._stack is None:
            raise RuntimeError("Coordinator is not started")
        return self.intake, self.commands

    def pending_starts(self) -> list[StartRequestRecord]:
        """Accepted starts no report has shown yet (a failed one is not pending)."""
        return [
            StartRequestRecord(
                intent.engine_id, intent.agent_id or "", intent.spec, intent.requested_at
            )
            for _, intent in self.state.starts.values()
            if intent.phase != "failed" and not self._registry.has_engine(intent.engine_id)
        ]

    async def report(self, agent_id: str, report: AgentReport) -> AgentReportReply:
        return await self._running()[0].report(agent_id, report)

    async def register_engine(self, request: RegisterEngineRequest, who: str) -> EngineInfo:
        return await self._running()[1].register(request, who)

    async def start_engine(self, request: EngineStartRequest, who: str) -> EngineInfo:
        return await self._running()[1].start(request, who)

    async def stop_engine(self, request: EngineStopRequest, who: str) -> EngineInfo:
        return await self._running()[1].stop(request, who)


class _PendingStarts:
    """The start intents no report has shown yet, as the reconciler reads them."""

    def __init__(self, backend: EtcdBackend) -> None:
        self._backend = backend

    def list(self) -> list[StartRequestRecord]:
        return self._backend.pending_starts()
