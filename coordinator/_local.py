"""The local backend: one coordinator owns the state (SQLite or memory). The default.

On entry it opens the store, restores the registry (agents with a grace on their
leases, registered engines, pending starts) and starts one task group with the loops of
its parts:

- :class:`~._reports.ReportIntake`: agents' reports and the lease sweep;
- :class:`~._prober.RegisteredEngineProber`: health probes of registered engines;
- :class:`~._commands.EngineCommands`: operators' register/start/stop;
- :class:`~._persistence.AgentRecordWriter` and :class:`~._persistence.RevisionMark`;
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
from sage.unified.coordinator._metrics import CoordinatorMetrics
from sage.unified.coordinator._persistence import AgentRecordWriter, RevisionMark
from sage.unified.coordinator._prober import RegisteredEngineProber
from sage.unified.coordinator._publisher import TablePublisher
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

__all__ = ["LocalBackend"]

log = logging.getLogger("sage.unified.coordinator")


class _Parts:
    """The parts that exist while the backend runs."""

    def __init__(
        self,
        intake: ReportIntake,
        commands: EngineCommands,
        starts: PendingStarts,
        writer: AgentRecordWriter,
    ) -> None:
        self.intake = intake
        self.commands = commands
        self.starts = starts
        self.writer = writer


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
        self._parts: _Parts | None = None
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
    def is_leader(self) -> bool:
        return self._parts is not None

    @property
    def ready(self) -> bool:
        return self._parts is not None

    @property
    def settling(self) -> bool:
        """See :attr:`ReportIntake.settling`."""
        return self._parts is not None and self._parts.intake.settling

    def _running(self) -> _Parts:
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
            parts = self._build_parts(registry, prober, http, stored.start_requests, stored.agents)
            stack.push_async_callback(parts.writer.flush)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            task_group.start_soon(parts.intake.sweep_loop)
            task_group.start_soon(prober.run)
            task_group.start_soon(parts.writer.run)
            task_group.start_soon(self._publisher.run)
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
            registry.put_registered(
                msgspec.structs.replace(
                    engine,
                    state=EngineState.STARTING,
                    reason="restored; waiting for health probes",
                )
            )
            prober.track(engine.id)
        return prober

    def _build_parts(
        self,
        registry: Registry,
        prober: RegisteredEngineProber,
        http: httpx.AsyncClient,
        start_requests: list[StartRequestRecord],
        restored: list[AgentRecord],
    ) -> _Parts:
        starts = PendingStarts(self.store, start_requests)
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
            agent_token=self.settings.agent_tokens[0] if self.settings.agent_tokens else None,
            agent_timeout_s=self.settings.agent_timeout_s,
            publish=self._publish,
        )
        return _Parts(intake, commands, starts, writer)

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
