"""The :class:`Coordinator`: the control plane's parts, started and stopped together.

Use it as an async context manager. On entry it opens the store, restores the registry
(agents with a grace on their leases, registered engines, pending starts) and starts one
task group with the loops of its parts:

- :class:`~._reports.ReportIntake`: agents' reports and the lease sweep;
- :class:`~._prober.RegisteredEngineProber`: health probes of registered engines;
- :class:`~._commands.EngineCommands`: operators' register/start/stop;
- :class:`~._persistence.AgentRecordWriter` and :class:`~._persistence.RevisionMark`;
- :class:`~._publisher.TablePublisher`: the routing table to watchers;
- :class:`~._audit.Auditor`: the audit trail;
- :class:`~._fleet.Fleet` (deployments, cordons) and the :class:`~._reconciler.Reconciler`
  that makes replicas follow them; :class:`~._fleet_service.FleetService` is what
  operators call.

Every revision bump is persisted (its block reserved) before watchers are woken. The
coordinator is also a :class:`~._api.ControlPlane` (what the management routes serve)
and a table feed (what an embedded gateway watches).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Literal, Self

import anyio
import httpx
import msgspec

from sage.unified.coordinator._addresses import AddressPolicy, Resolver
from sage.unified.coordinator._api import LocalSession
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._commands import EngineCommands, PendingStarts
from sage.unified.coordinator._errors import AuthenticationError, SettlingError, UrlPolicyError
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
from sage.unified.coordinator._retention import aged_out
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import (
    MemoryStore,
    SqliteStore,
    StartRequestRecord,
    Store,
    StoredState,
)
from sage.unified.sdk.auth import bearer_token
from sage.unified.sdk.client import async_http_pool
from sage.unified.sdk.clock import Clock, SystemClock
from sage.unified.sdk.models import (
    AgentReport,
    AgentReportReply,
    AgentSummary,
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
    RegisterEngineRequest,
    RoutingTable,
)
from sage.unified.sdk.protocol import AuditRecord, HostGpus
from sage.unified.sdk.states import EngineState

__all__ = ["Coordinator", "Resolver"]

log = logging.getLogger("sage.unified.coordinator")


class _Parts:
    """The parts that exist while the coordinator runs."""

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


class Coordinator:
    """The control plane of one deployment (embedded in a gateway or standalone).

    Args:
        settings: configuration.
        clock: time source (leases use its monotonic clock); the system clock by default.
        store: persistence; :class:`SqliteStore` at ``settings.db_path``, or
            :class:`MemoryStore` when that is ``None``.
        http_client: connection pool for agent calls and probes (owned by the caller
            when given; make one with :func:`sage.unified.sdk.client.async_http_pool`).
        resolver: host name resolution for registered URLs (``anyio.getaddrinfo``).

    Use ``async with Coordinator(settings) as coordinator:``; methods other than the
    pure queries need the context to be entered.
    """

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        http_client: httpx.AsyncClient | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        if store is None:
            store = SqliteStore(settings.db_path) if settings.db_path is not None else MemoryStore()
        self.store: Store = store
        self.metrics = CoordinatorMetrics()
        self.auditor = Auditor(store, self.clock)
        self._registry = self._new_registry(0)
        self._publisher = TablePublisher(self._registry, settings.watch_coalesce_s)
        self._admin_tokens = settings.admin_token_set()
        self._agent_tokens = settings.agent_token_set()
        self._addresses = AddressPolicy(settings.networks(), resolver)
        self._given_client = http_client
        self._mark = RevisionMark(store, 0)
        self._parts: _Parts | None = None
        self._stack: AsyncExitStack | None = None

    def _new_registry(self, revision: int) -> Registry:
        return Registry(
            self.clock,
            lease_ttl_s=self.settings.lease_ttl_s,
            lost_engine_retention_s=self.settings.lost_engine_retention_s,
            load_publish_interval_s=self.settings.load_publish_interval_s,
            revision=revision,
        )

    # --------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("Coordinator is already running")
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
    ) -> _Parts:
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
        return _Parts(intake, commands, starts, writer, reconciler, service)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._parts = None
        if stack is not None:
            await stack.aclose()

    @property
    def ready(self) -> bool:
        """Whether the coordinator is started (store open, loops running)."""
        return self._parts is not None

    @property
    def settling(self) -> bool:
        """Just restarted and waiting (at most one lease TTL) for known agents to report
        again; see :attr:`ReportIntake.settling`."""
        return self._parts is not None and self._parts.intake.settling

    def _running(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("Coordinator is not started")
        return self._parts

    # -------------------------------------------------------------- the table

    @property
    def revision(self) -> int:
        return self._registry.revision

    @property
    def registry(self) -> Registry:
        """The pure registry (read it; change it only through this class)."""
        return self._registry

    def routing_table(self) -> RoutingTable:
        """The current routing table (READY engines only)."""
        return self._publisher.current()

    def routing_table_json(self, table: RoutingTable | None = None) -> bytes:
        """``table`` (the current one by default) as JSON, encoded once per table.

        Long-polling gateways all wake on the same table; with thousands of engines,
        encoding it once instead of once per watcher matters.
        """
        return self._publisher.table_json(table)

    async def wait_for_change(self, after: int, timeout: float) -> RoutingTable:  # noqa: ASYNC109 (long-poll API: the wait is the contract)
        """Wait until a table with a revision greater than ``after`` is published, or ``timeout`` s.

        Returns the latest *published* table either way: watchers are woken at most
        once per ``watch_coalesce_s`` and all get the same table. When ``after`` is
        *ahead* of the current revision (the caller saw a coordinator with a
        different history), returns at once so the caller resynchronises.

        Cancellation: safe; nothing is consumed.
        """
        return await self._publisher.wait_for_change(after, timeout)

    def watch(self, after: int = -1) -> AsyncGenerator[RoutingTable, None]:
        """Yield the table now (when its revision is past ``after``) and on every change.

        Close it when done (``async with contextlib.aclosing(coordinator.watch()) as tables:``)
        so the generator does not outlive its task. Tables are coalesced: a consumer
        that is slow sees the latest revision, not every one in between.
        """
        return self._publisher.watch(after)

    async def backends_json(self, after: int | None, wait: float) -> bytes:
        """The routing table as JSON; with ``after`` and ``wait`` a long-poll.

        Raises:
            SettlingError: just restarted; gateways keep their last table meanwhile.
        """
        if self.settling:
            raise SettlingError(
                "the coordinator restarted and is waiting for its agents to report again; "
                "keep using the last routing table and retry in a second"
            )
        if after is None or wait <= 0:
            return self.routing_table_json()
        table = await self.wait_for_change(after, min(wait, self.settings.max_watch_s))
        return self.routing_table_json(table)

    # ---------------------------------------------------------------- queries

    def engines(self) -> list[EngineInfo]:
        """Every engine, but those aged out of the listings (``stopped_engine_retention_s``)."""
        now = self.clock.time()
        retention = self.settings.stopped_engine_retention_s
        names = self._parts.fleet.names() if self._parts is not None else frozenset[str]()
        return [e for e in self._registry.engines() if not aged_out(e, now, retention, names)]

    def engine(self, engine_id: str) -> EngineInfo:
        return self._registry.engine(engine_id)

    def agents(self) -> list[AgentSummary]:
        summaries = self._registry.agent_summaries()
        if self._parts is None:
            return summaries
        return [self._parts.fleet.summary(a) for a in summaries]

    @property
    def fleet(self) -> FleetService:
        """Deployments, rollouts, cordon and drain, GPU clear (needs the context entered)."""
        return self._running().fleet

    @property
    def reconciler(self) -> Reconciler:
        return self._running().reconciler

    def gpu_hosts(self) -> list[HostGpus]:
        return [
            HostGpus(agent_id=a.agent_id, host=a.host, gpus=a.gpus, gpu_error=a.gpu_error)
            for a in self._registry.agent_summaries()
        ]

    def pending_starts(self) -> list[StartRequestRecord]:
        return self._running().starts.list()

    def metrics_text(self) -> bytes:
        return self.metrics.render(self.agents(), self.engines(), self.revision)

    # --------------------------------------------------------------- commands

    async def authenticate(
        self, scope: Literal["admin", "agent"], authorization: str | None, *, target: str = ""
    ) -> str:
        """Check a request's ``Authorization`` header for ``scope``; returns who it is.

        A scope with no token configured is open, and the caller is ``"anonymous"``:
        the settings refuse that on non-loopback binds. Deciding per scope means an
        admin token alone does not lock out the agents of a loopback deployment.

        Raises:
            AuthenticationError: missing or wrong token (the rejection is audited).
        """
        tokens = self._admin_tokens if scope == "admin" else self._agent_tokens
        if not tokens:
            return "anonymous"
        token = bearer_token(authorization)
        if tokens.verify(token):
            return "admin" if scope == "admin" else f"agent:{target}"
        reason = "missing bearer token" if token is None else f"token not valid for {scope} scope"
        await self.audit("unauthenticated", f"auth:{scope}", target, f"rejected: {reason}")
        raise AuthenticationError(f"{reason}: send 'Authorization: Bearer <{scope} token>'")

    async def authorize(self, authorization: str | None, target: str) -> LocalSession:
        """An admin session for one request (see :class:`~._api.ControlPlane`)."""
        who = await self.authenticate("admin", authorization, target=target)
        return LocalSession(self, who)

    async def report(self, agent_id: str, report: AgentReport) -> AgentReportReply:
        """Apply an agent snapshot and renew its lease (see :meth:`ReportIntake.report`)."""
        return await self._running().intake.report(agent_id, report)

    async def register_engine(
        self, request: RegisterEngineRequest, who: str = "admin"
    ) -> EngineInfo:
        """See :meth:`EngineCommands.register`."""
        return await self._running().commands.register(request, who)

    async def start_engine(self, request: EngineStartRequest, who: str = "admin") -> EngineInfo:
        """See :meth:`EngineCommands.start`."""
        return await self._running().commands.start(request, who)

    async def stop_engine(self, request: EngineStopRequest, who: str = "admin") -> EngineInfo:
        """See :meth:`EngineCommands.stop`."""
        return await self._running().commands.stop(request, who)

    async def audit(self, who: str, action: str, target: str, result: str) -> None:
        """Record a control action; never raises (see :meth:`Auditor.record`)."""
        await self.auditor.record(who, action, target, result)

    async def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        return await self.auditor.entries(limit)

    async def _publish(self, revision: int) -> None:
        await self._mark.cover(revision)
        self._publisher.notify()
        self._kick_reconciler()

    def _kick_reconciler(self) -> None:
        if self._parts is not None:
            self._parts.reconciler.kick()
