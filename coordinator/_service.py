"""The :class:`Coordinator`: the control plane of one gateway or standalone process.

Use it as an async context manager. Its state lives in a backend
(:class:`~._backend.ControlPlaneBackend`): :class:`~._local.LocalBackend` (SQLite or
memory, one coordinator; the default) or :class:`~._ha.EtcdBackend` (an etcd cluster
shared by several gateways, selected by ``store = "etcd://..."``). The facade adds what
both share: tokens and the audit of refused ones, the table publisher
(:class:`~._publisher.TablePublisher`), queries and metrics. It is also a
:class:`~._api.ControlPlane` (what the management routes serve) and a table feed (what an
embedded gateway watches).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Literal, Self

import httpx

from sage.unified.coordinator._addresses import AddressPolicy, Resolver
from sage.unified.coordinator._api import LocalSession
from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._backend import ControlPlaneBackend, LeaderTask, StoreStatus
from sage.unified.coordinator._errors import AuthenticationError, SettlingError
from sage.unified.coordinator._fleet_service import FleetService
from sage.unified.coordinator._local import LocalBackend, LocalParts
from sage.unified.coordinator._metrics import CoordinatorMetrics
from sage.unified.coordinator._publisher import TablePublisher
from sage.unified.coordinator._reconciler import Reconciler
from sage.unified.coordinator._registry import Registry
from sage.unified.coordinator._retention import aged_out
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import MemoryStore, SqliteStore, StartRequestRecord, Store
from sage.unified.sdk.auth import bearer_token
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

__all__ = ["Coordinator", "Resolver"]

log = logging.getLogger("sage.unified.coordinator")


class Coordinator:
    """The control plane of one deployment (embedded in a gateway or standalone).

    Args:
        settings: configuration; ``settings.store`` picks the backend.
        clock: time source (leases use its monotonic clock); the system clock by default.
        store: persistence of the local backend; :class:`SqliteStore` at
            ``settings.db_path``, or :class:`MemoryStore` when that is ``None`` or the
            store is ``memory``. Ignored
            with an etcd store.
        http_client: connection pool for agent calls and probes (owned by the caller
            when given; make one with :func:`sage.unified.sdk.client.async_http_pool`).
        resolver: host name resolution for registered URLs (``anyio.getaddrinfo``).
        leader_tasks: work that must run in one place only (see
            :class:`~._backend.LeaderTask`); more with :meth:`add_leader_task`.

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
        leader_tasks: Sequence[LeaderTask] = (),
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.metrics = CoordinatorMetrics()
        self._admin_tokens = settings.admin_token_set()
        self._agent_tokens = settings.agent_token_set()
        addresses = AddressPolicy(settings.networks(), resolver)
        self._leader_tasks: list[LeaderTask] = list(leader_tasks)
        self.store: Store | None = None
        backend: ControlPlaneBackend
        if settings.etcd_store:
            # Imported here: a coordinator with a local store never loads the etcd client.
            from sage.unified.coordinator._ha import EtcdBackend

            backend = EtcdBackend(
                settings,
                clock=self.clock,
                metrics=self.metrics,
                addresses=addresses,
                http_client=http_client,
                leader_tasks=self._leader_tasks,
            )
            self._publisher = backend.publisher
        else:
            if store is None:
                path = settings.local_db_path
                store = SqliteStore(path) if path is not None else MemoryStore()
            self.store = store
            self._publisher = TablePublisher(Registry(self.clock), settings.watch_coalesce_s)
            backend = LocalBackend(
                settings,
                clock=self.clock,
                store=store,
                metrics=self.metrics,
                addresses=addresses,
                publisher=self._publisher,
                http_client=http_client,
                leader_tasks=self._leader_tasks,
            )
        self.backend = backend
        self._started = False
        self._stack: AsyncExitStack | None = None

    def add_leader_task(self, task: LeaderTask) -> None:
        """Run ``task`` wherever work that must happen once runs (before entering)."""
        if self._stack is not None:
            raise RuntimeError("add leader tasks before the coordinator starts")
        self._leader_tasks.append(task)

    @property
    def auditor(self) -> Auditor:
        return self.backend.auditor

    # --------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("Coordinator is already running")
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.backend)
            self._started = True
            stack.callback(self._stopped)
            self._stack = stack.pop_all()
        return self

    def _stopped(self) -> None:
        self._started = False

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @property
    def ready(self) -> bool:
        """Whether the coordinator is started (store open, or etcd read once; loops
        running)."""
        return self._started and self.backend.ready

    @property
    def settling(self) -> bool:
        """Just restarted and waiting (at most one lease TTL) for known agents to report
        again; see :attr:`ReportIntake.settling`."""
        return self._started and self.backend.settling

    @property
    def store_status(self) -> StoreStatus:
        """Whether the store is reachable (etcd: the gateway serves its last table while
        it is not, and management writes answer 503)."""
        return self.backend.store_status

    @property
    def is_leader(self) -> bool:
        """Whether work that must happen once runs in this process now."""
        return self._started and self.backend.is_leader

    # -------------------------------------------------------------- the table

    @property
    def revision(self) -> int:
        return self.registry.revision

    @property
    def registry(self) -> Registry:
        """The pure registry (read it; change it only through this class)."""
        return self.backend.registry

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
        names = self.backend.fleet.names() if self._started else frozenset[str]()
        return [e for e in self.registry.engines() if not aged_out(e, now, retention, names)]

    def engine(self, engine_id: str) -> EngineInfo:
        return self.registry.engine(engine_id)

    def agents(self) -> list[AgentSummary]:
        summaries = self.registry.agent_summaries()
        if not self._started:
            return summaries
        return [self.backend.fleet.summary(a) for a in summaries]

    @property
    def fleet(self) -> FleetService:
        """Deployments, rollouts, cordon and drain, GPU clear (needs the context entered)."""
        self._require_running()
        return self.backend.fleet

    @property
    def reconciler(self) -> Reconciler:
        self._require_running()
        return self.backend.reconciler

    def _require_running(self) -> None:
        if not self._started:
            raise RuntimeError("Coordinator is not started")

    def _running(self) -> LocalParts:
        """The local backend's parts (tests drive its sweep directly)."""
        if not isinstance(self.backend, LocalBackend):
            raise RuntimeError("the coordinator's store is not local")
        return self.backend._running()

    def gpu_hosts(self) -> list[HostGpus]:
        return [
            HostGpus(agent_id=a.agent_id, host=a.host, gpus=a.gpus, gpu_error=a.gpu_error)
            for a in self.registry.agent_summaries()
        ]

    def pending_starts(self) -> list[StartRequestRecord]:
        return self.backend.pending_starts()

    def metrics_text(self) -> bytes:
        return self.metrics.render(
            self.agents(),
            self.engines(),
            self.revision,
            store_reachable=self.store_status.reachable,
            leader=self.is_leader,
        )

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
        return await self.backend.report(agent_id, report)

    async def register_engine(
        self, request: RegisterEngineRequest, who: str = "admin"
    ) -> EngineInfo:
        """See :meth:`EngineCommands.register`."""
        return await self.backend.register_engine(request, who)

    async def start_engine(self, request: EngineStartRequest, who: str = "admin") -> EngineInfo:
        """See :meth:`EngineCommands.start`."""
        return await self.backend.start_engine(request, who)

    async def stop_engine(self, request: EngineStopRequest, who: str = "admin") -> EngineInfo:
        """See :meth:`EngineCommands.stop`."""
        return await self.backend.stop_engine(request, who)

    async def audit(self, who: str, action: str, target: str, result: str) -> None:
        """Record a control action; never raises (see :meth:`Auditor.record`)."""
        await self.auditor.record(who, action, target, result)

    async def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        return await self.auditor.entries(limit)
