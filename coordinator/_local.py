"""The local backend: one coordinator owns the state (SQLite or memory). The default.

On entry it opens the store, restores the registry (agents with a grace on their
leases, registered engines, pending starts) and starts one task group with the loops of
its parts:

- :class:`~._reports.ReportIntake`: agents' reports and the lease sweep;
- :class:`~._prober.RegisteredEngineProber`: health probes of registered engines;
- :class:`~._commands.EngineCommands`: operators' register/start/stop;
- :class:`~._persistence.AgentRecordWriter` and :class:`~._persistence.RevisionMark`;
- :class:`~._fleet.Fleet` (deployments, cordons) and the :class:`~._reconciler.Reconciler`
  that makes replicas follow them; :class:`~._fleet_service.FleetService` is what
  operators call;
- the leader tasks (this coordinator always leads).

Every revision bump is persisted (its block reserved) before watchers are woken.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio
import httpx
import msgspec

from sage.unified.coordinator._addresses import AddressPolicy
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._backend import LeaderTask, StoreStatus, run_leader_tasks
from sage.unified.coordinator._commands import EngineCommands, PendingStarts
from sage.unified.coordinator._errors import UrlPolicyError
from sage.unified.coordinator._fleet import Fleet
from sage.unified.coordinator._fleet_service import FleetService
from sage.unified.coordinator._metrics import CoordinatorMetrics
from sage.unified.coordinator._netcheck import parse_engine_url
from sage.unified.coordinator._persistence import AgentRecordWriter, RevisionMark
from sage.unified.coordinator._prober import RegisteredEngineProber
from sage.unified.coordinator._publisher import TablePublisher
from sage.unified.coordinator._reconciler import Reconciler
from sage.unified.coordinator._registry import AgentRecord, Registry
from sage.unified.coordinator._reports import ReportIntake
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import SqliteStore, StartRequestRecord, Store, StoredState
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
from sage.unified.sdk.states import EngineState

__all__ = ["LocalBackend", "LocalParts"]

log = logging.getLogger("sage.unified.coordinator")


class LocalParts:
    """The parts that exist while the backend runs."""

    def __init__(
        self,
        intake: ReportIntake,
        commands: EngineCommands,
        starts: PendingStarts,
        writer: AgentRecordWriter,
        reconciler: Reconciler,
        fleet: FleetService,
    ) -> None:
        self.intake = intake
        self.commands = commands
        self.starts = starts
        self.writer = writer
        self.reconciler = reconciler
        self.fleet = fleet


class LocalBackend:
    """State owned by this coordinator, persisted in ``store``.

    Args:
        settings: configuration.
        clock: leases and timestamps.
        store: persistence (SQLite or memory).
        metrics: report counters.
        addresses: the network policy of agents' hosts and registered URLs.
        publisher: the table publisher (the facade's); its registry is replaced on entry.
        http_client: the pool for agent calls and probes (``None``: one of its own).
        leader_tasks: run while the backend runs.
    """

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        clock: Clock,
        store: Store,
        metrics: CoordinatorMetrics,
        addresses: AddressPolicy,
        publisher: TablePublisher,
        http_client: httpx.AsyncClient | None,
        leader_tasks: Sequence[LeaderTask] = (),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.metrics = metrics
        self.auditor = Auditor(store, clock)
        self._addresses = addresses
        self._publisher = publisher
        self._given_client = http_client
        self._leader_tasks = leader_tasks
        self._registry = self._new_registry(0)
        self._mark = RevisionMark(store, 0)
        self._parts: LocalParts | None = None
        self._stack: AsyncExitStack | None = None
        self.store_status = StoreStatus(
            kind="sqlite" if isinstance(store, SqliteStore) else "memory"
        )

    def _new_registry(self, revision: int) -> Registry:
        return Registry(
            self.clock,
            lease_ttl_s=self.settings.lease_ttl_s,
            lost_engine_retention_s=self.settings.lost_engine_retention_s,
            load_publish_interval_s=self.settings.load_publish_interval_s,
            revision=revision,
        )

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def fleet(self) -> FleetService:
        return self._running().fleet

    @property
    def reconciler(self) -> Reconciler:
        return self._running().reconciler

    @property
    def is_leader(self) -> bool:
        return self._parts is not None

    @property
    def ready(self) -> bool:
        return self._parts is not None

    @property
    def settling(self) -> bool:
        """See :attr:`ReportIntake.settling`."""
        return self._parts is not None and self._parts.intake.settling

    def _running(self) -> LocalParts:
        if self._parts is None:
            raise RuntimeError("Coordinator is not started")
        return self._parts

    async def __aenter__(self) -> LocalBackend:
        async with AsyncExitStack() as stack:
            stored = await self.store.open()
            stack.push_async_callback(self.store.close)
            self._mark = RevisionMark(self.store, stored.revision)
            registry = self._new_registry(stored.revision)
            for record in stored.agents:
                registry.restore_agent(record, grace_s=self.settings.restart_grace_s)
            http = self._given_client
            if http is None:
                http = await stack.enter_async_context(async_http_pool())
            prober = self._restore_prober(registry, http, stored)
            self._registry = registry
            self._publisher.attach(registry)
            self._publisher.open()
            await self._mark.cover(registry.revision)
            parts = self._build_parts(registry, prober, http, stored)
            stack.push_async_callback(parts.writer.flush)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            task_group.start_soon(parts.intake.sweep_loop)
            task_group.start_soon(prober.run)
            task_group.start_soon(parts.writer.run)
            task_group.start_soon(self._publisher.run)
            task_group.start_soon(parts.reconciler.run)
            task_group.start_soon(run_leader_tasks, self._leader_tasks)
            self._parts = parts
            self._stack = stack.pop_all()
        log.info(
            "coordinator started: revision %d, %d agents restored with %g s grace, %d registered engines",
            registry.revision,
            len(stored.agents),
            self.settings.restart_grace_s,
            len(stored.registered),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        self._parts = None
        if stack is not None:
            await stack.aclose()

    def _restore_prober(
        self, registry: Registry, http: httpx.AsyncClient, stored: StoredState
    ) -> RegisteredEngineProber:
        prober = RegisteredEngineProber(
            registry,
            settings=self.settings,
            addresses=self._addresses,
            http=http,
            publish=self._publish,
            notify=self._publisher.notify,
        )
        for engine in stored.registered:
            self._restore_registered(registry, prober, engine)
        return prober

    @staticmethod
    def _restore_registered(
        registry: Registry, prober: RegisteredEngineProber, engine: EngineInfo
    ) -> None:
        """Put a stored registered engine back: probed again, or ERROR (never probed) when
        its stored URL no longer passes the URL policy."""
        try:
            parse_engine_url(engine.url)
        except UrlPolicyError as exc:
            registry.put_registered(
                msgspec.structs.replace(
                    engine, state=EngineState.ERROR, reason=f"stored URL refused: {exc.message}"
                )
            )
            log.error("registered engine %s: %s", engine.id, exc.message)
            return
        registry.put_registered(
            msgspec.structs.replace(
                engine, state=EngineState.STARTING, reason="restored; waiting for health probes"
            )
        )
        prober.track(engine.id)

    def _build_parts(
        self,
        registry: Registry,
        prober: RegisteredEngineProber,
        http: httpx.AsyncClient,
        stored: StoredState,
    ) -> LocalParts:
        restored: list[AgentRecord] = stored.agents
        starts = PendingStarts(self.store, stored.start_requests)
        fleet = Fleet(
            self.store,
            self.auditor,
            self.clock,
            deployments=stored.deployments,
            cordons=stored.cordons,
            changed=self._kick_reconciler,
        )
        writer = AgentRecordWriter(self.store)
        intake = ReportIntake(
            registry,
            settings=self.settings,
            clock=self.clock,
            addresses=self._addresses,
            auditor=self.auditor,
            metrics=self.metrics,
            writer=writer,
            publish=self._publish,
            on_engines_seen=starts.seen,
            # Restored agents are known but their engines are not (agents are the source
            # of truth for those): until each has reported again, or one lease TTL has
            # passed, the routing table would be missing engines that are serving.
            restored_agents=[record.agent_id for record in restored],
            deployments=fleet.names,
        )
        commands = EngineCommands(
            registry,
            clock=self.clock,
            store=self.store,
            addresses=self._addresses,
            auditor=self.auditor,
            prober=prober,
            starts=starts,
            http=http,
            agent_token=self.settings.agent_command_token
            or (self.settings.agent_tokens[0] if self.settings.agent_tokens else None),
            agent_timeout_s=self.settings.agent_timeout_s,
            publish=self._publish,
            own_address=(self.settings.host, self.settings.port),
            is_cordoned=fleet.is_cordoned,
        )
        reconciler = Reconciler(
            registry,
            fleet,
            commands,
            starts,
            settings=self.settings,
            clock=self.clock,
            settling=lambda: intake.settling,
            auditor=self.auditor,
        )
        service = FleetService(registry, fleet, reconciler, commands, self.auditor, self.clock)
        return LocalParts(intake, commands, starts, writer, reconciler, service)

    def pending_starts(self) -> list[StartRequestRecord]:
        return self._running().starts.list()

    async def report(self, agent_id: str, report: AgentReport) -> AgentReportReply:
        """See :meth:`ReportIntake.report`."""
        return await self._running().intake.report(agent_id, report)

    async def register_engine(self, request: RegisterEngineRequest, who: str) -> EngineInfo:
        """See :meth:`EngineCommands.register`."""
        return await self._running().commands.register(request, who)

    async def start_engine(self, request: EngineStartRequest, who: str) -> EngineInfo:
        """See :meth:`EngineCommands.start`."""
        return await self._running().commands.start(request, who)

    async def stop_engine(self, request: EngineStopRequest, who: str) -> EngineInfo:
        """See :meth:`EngineCommands.stop`."""
        return await self._running().commands.stop(request, who)

    async def _publish(self, revision: int) -> None:
        await self._mark.cover(revision)
        self._publisher.notify()
        self._kick_reconciler()

    def _kick_reconciler(self) -> None:
        if self._parts is not None:
            self._parts.reconciler.kick()
