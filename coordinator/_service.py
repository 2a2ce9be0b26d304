"""The :class:`Coordinator`: registry + store + watchers + background loops + agent calls.

An I/O shell around the pure :class:`~._registry.Registry`. Use it as an async
context manager; it owns a task group with two loops:

- the lease sweep (every ``sweep_interval_s``): marks hosts whose lease lapsed as
  lost, deletes their engines after retention, publishes pending load changes;
- the prober: ``GET {url}/health`` of every directly registered engine every
  ``probe_interval_s`` (timeout ``probe_timeout_s``), re-checking the URL policy
  each time.

Both loops survive errors (logged, then the next interval) and stop when the
context exits. Every revision bump is persisted before watchers are woken.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.lowlevel
import httpx
import msgspec

from sage.unified.coordinator._errors import (
    AuthenticationError,
    ConflictError,
    CoordinatorError,
    InvalidRequestError,
    UrlPolicyError,
)
from sage.unified.coordinator._metrics import CoordinatorMetrics
from sage.unified.coordinator._netcheck import check_addresses, parse_engine_url
from sage.unified.coordinator._outbound import AgentApi, new_http_client
from sage.unified.coordinator._placement import Candidate, place
from sage.unified.coordinator._probing import ProbeTracker
from sage.unified.coordinator._publisher import TablePublisher
from sage.unified.coordinator._registry import AgentRecord, Registry
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import (
    AuditEntry,
    MemoryStore,
    SqliteStore,
    StartRequestRecord,
    Store,
)
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
from sage.unified.sdk.states import EngineState

__all__ = ["REVISION_BLOCK", "Coordinator", "Resolver"]

REVISION_BLOCK = 1000
"""Revisions reserved per store write (see ``Coordinator._publish``)."""

log = logging.getLogger("sage.unified.coordinator")

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``; raises :class:`OSError` when the name does not resolve."""


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Coordinator:
    """The control plane of one deployment (embedded in a gateway or standalone).

    Args:
        settings: configuration.
        clock: time source (leases use its monotonic clock); the system clock by default.
        store: persistence; :class:`SqliteStore` at ``settings.db_path``, or
            :class:`MemoryStore` when that is ``None``.
        http_client: client for agent calls and probes (owned by the caller when given).
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
        self._registry = self._new_registry(0)
        self._publisher = TablePublisher(self._registry, settings.watch_coalesce_s)
        self._admin_tokens = settings.admin_token_set()
        self._agent_tokens = settings.agent_token_set()
        self._networks = settings.networks()
        self._resolver: Resolver = resolver or _getaddrinfo
        self._given_client = http_client
        self._api: AgentApi | None = None
        self._probe_kick: anyio.Event | None = None
        self._trackers: dict[str, ProbeTracker] = {}
        self._pending_starts: dict[str, StartRequestRecord] = {}
        self._allowed_agent_hosts: set[str] = set()
        self._settling_agents: set[str] = set()
        self._settle_deadline = 0.0
        self._stack: AsyncExitStack | None = None
        self._ready = False
        self._agent_writes: dict[str, AgentRecord] = {}
        self._agent_kick: anyio.Event | None = None
        self._reserved = 0

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
            self._probe_kick = anyio.Event()
            stored = await self.store.open()
            stack.push_async_callback(self.store.close)
            stack.push_async_callback(self._flush_agents)
            self._reserved = stored.revision
            registry = self._new_registry(stored.revision)
            for record in stored.agents:
                registry.restore_agent(record, grace_s=self.settings.restart_grace_s)
            # Restored agents are known but their engines are not (agents are the source
            # of truth for those): until each has reported again, or one lease TTL has
            # passed, the routing table would be missing engines that are serving.
            self._settling_agents = {record.agent_id for record in stored.agents}
            self._settle_deadline = self.clock.monotonic() + self.settings.lease_ttl_s
            for engine in stored.registered:
                restored = msgspec.structs.replace(
                    engine, state=EngineState.STARTING, reason="restored; waiting for health probes"
                )
                registry.put_registered(restored)
                self._trackers[engine.id] = self._tracker()
            self._registry = registry
            self._publisher.attach(registry)
            self._publisher.open()
            self._pending_starts = {r.engine_id: r for r in stored.start_requests}
            if registry.revision > self._reserved:
                self._reserved = registry.revision + REVISION_BLOCK
                await self.store.save_revision(self._reserved)
            client = self._given_client
            if client is None:
                client = await stack.enter_async_context(
                    new_http_client(self.settings.agent_timeout_s)
                )
            token = self.settings.agent_tokens[0] if self.settings.agent_tokens else None
            self._api = AgentApi(client, token)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            task_group.start_soon(self._sweep_loop)
            task_group.start_soon(self._probe_loop)
            task_group.start_soon(self._agent_writer_loop)
            task_group.start_soon(self._publisher.run)
            self._ready = True
            self._stack = stack.pop_all()
        log.info(
            "coordinator started: revision %d, %d agents restored with %g s grace, %d registered engines",
            registry.revision,
            len(stored.agents),
            self.settings.restart_grace_s,
            len(stored.registered),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._ready = False
        if stack is not None:
            await stack.aclose()

    @property
    def ready(self) -> bool:
        """Whether the coordinator is started (store open, loops running)."""
        return self._ready

    @property
    def settling(self) -> bool:
        """Just restarted, and some agents it knew have not reported again yet.

        For at most one lease TTL. Meanwhile the routing table lacks their engines, so
        ``/v1/management/backends`` answers 503 (gateways keep their last table) and an
        embedded gateway answers 503 rather than 404 for a model it cannot see yet.
        """
        if not self._settling_agents:
            return False
        if self.clock.monotonic() >= self._settle_deadline:
            self._settling_agents.clear()
            return False
        return True

    # -------------------------------------------------------------- queries

    @property
    def revision(self) -> int:
        return self._registry.revision

    @property
    def registry(self) -> Registry:
        """The pure registry (read it; change it only through this class)."""
        return self._registry

    def routing_table(self) -> RoutingTable:
        """The current routing table (READY engines only)."""
        return self._registry.routing_table()

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

    def watch(self, after: int = -1) -> AsyncIterator[RoutingTable]:
        """Yield the table now (when its revision is past ``after``) and on every change.

        Close it when done (``async with contextlib.aclosing(coordinator.watch()) as tables:``)
        so the generator does not outlive its task. Tables are coalesced: a consumer
        that is slow sees the latest revision, not every one in between.
        """
        return self._publisher.watch(after)

    def engines(self) -> list[EngineInfo]:
        return self._registry.engines()

    def engine(self, engine_id: str) -> EngineInfo:
        return self._registry.engine(engine_id)

    def agents(self) -> list[AgentSummary]:
        return self._registry.agent_summaries()

    def gpu_hosts(self) -> list[dict[str, Any]]:
        return [
            {"agent_id": a.agent_id, "host": a.host, "gpus": a.gpus, "gpu_error": a.gpu_error}
            for a in self._registry.agent_summaries()
        ]

    def pending_starts(self) -> list[StartRequestRecord]:
        return list(self._pending_starts.values())

    def metrics_text(self) -> bytes:
        return self.metrics.render(self.agents(), self.engines(), self.revision)

    # ------------------------------------------------------------------ auth

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

    # --------------------------------------------------------------- reports

    async def report(self, agent_id: str, report: AgentReport) -> AgentReportReply:
        """Apply an agent snapshot and renew its lease.

        Raises:
            InvalidRequestError: ``report.agent_id`` differs from the path id.
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
            if report.host not in self._allowed_agent_hosts:
                # The gateway will send prompts to this host's engines: it must pass
                # the same network allow-list as a directly registered engine.
                await self._check_host(report.host, report.port_range[0])
                self._allowed_agent_hosts.add(report.host)
            outcome = self._registry.apply_report(report)
            self._settling_agents.discard(agent_id)
        except CoordinatorError as exc:
            self.metrics.reports.labels(result="rejected").inc()
            await self.audit(f"agent:{agent_id}", "report", agent_id, f"rejected: {exc.message}")
            raise
        for note in outcome.notes:
            log.info("agent %s: %s", agent_id, note)
        if outcome.agent_changed:
            # Write-behind: a burst of new agents is one transaction, off the report path.
            self._agent_writes[report.agent_id] = AgentRecord(
                report.agent_id, report.url, report.host, report.incarnation
            )
            if self._agent_kick is not None:
                self._agent_kick.set()
        if self._pending_starts:
            for engine_id in outcome.engine_ids:
                if self._pending_starts.pop(engine_id, None) is not None:
                    await self.store.delete_start_request(engine_id)
        if outcome.changed:
            await self._publish(outcome.revision)
        self.metrics.reports.labels(result="accepted").inc()
        self.metrics.report_latency.observe(time.perf_counter() - started)
        return AgentReportReply(
            lease_ttl_s=self.settings.lease_ttl_s,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            revision=outcome.revision,
        )

    # ------------------------------------------------------ management: engines

    async def register_engine(
        self, request: RegisterEngineRequest, who: str = "admin"
    ) -> EngineInfo:
        """Add an engine no agent manages; it is probed and routed once healthy.

        Raises:
            UrlPolicyError: bad scheme, or the host resolves outside the allowed networks.
            ConflictError: the id is taken.
        Every outcome is audited.
        """
        target = request.id or request.url
        try:
            parsed = parse_engine_url(request.url)
            await self._check_host(parsed.host, parsed.port)
            engine_id = request.id or f"reg-{uuid.uuid4().hex[:12]}"
            if self._registry.has_engine(engine_id):
                raise ConflictError(
                    f"engine id {engine_id!r} already exists", code="engine_exists", param="id"
                )
            now = self.clock.time()
            info = EngineInfo(
                id=engine_id,
                model=request.model,
                kind=request.kind,
                host=parsed.host,
                port=parsed.port,
                url=parsed.url,
                state=EngineState.STARTING,
                reason="registered; waiting for a good health probe",
                created_at=now,
                state_changed_at=now,
            )
            self._registry.put_registered(info)
            self._trackers[engine_id] = self._tracker()
            await self.store.put_registered(info)
        except CoordinatorError as exc:
            await self.audit(who, "engine.register", target, f"rejected: {exc.message}")
            raise
        await self.audit(
            who, "engine.register", engine_id, f"ok: {parsed.url} model {request.model}"
        )
        await self._publish(self._registry.revision)
        if self._probe_kick is not None:
            self._probe_kick.set()
        return self._registry.engine(engine_id)

    async def start_engine(self, request: EngineStartRequest, who: str = "admin") -> EngineInfo:
        """Place an engine and ask that agent to start it; returns the agent's answer.

        Raises:
            PlacementError: nothing fits, no agent, or the named host is unknown.
            AgentUnreachableError: the agent did not answer (502, names the agent).
            AgentRejectedError: the agent refused (its 4xx status and message).
        """
        target = request.spec.name
        try:
            candidates = [
                Candidate(
                    agent_id=summary.agent_id,
                    host=summary.host,
                    url=summary.url,
                    lost=summary.lost,
                    gpus=summary.gpus,
                    engines=len(engines),
                    gpu_error=summary.gpu_error,
                    gpu_free_runtimes=summary.gpu_free_runtimes,
                )
                for summary, engines in self._registry.live_agents()
            ]
            chosen = place(request.spec, candidates, request.host)
            info = await self._agents_api().start(chosen.url, request.spec)
            record = StartRequestRecord(info.id, chosen.agent_id, request.spec, self.clock.time())
            if not self._registry.has_engine(info.id):
                self._pending_starts[info.id] = record
                await self.store.put_start_request(record)
        except CoordinatorError as exc:
            await self.audit(who, "engine.start", target, f"rejected: {exc.message}")
            raise
        await self.audit(
            who, "engine.start", info.id, f"ok: agent {chosen.agent_id} model {target}"
        )
        return info

    async def stop_engine(self, request: EngineStopRequest, who: str = "admin") -> EngineInfo:
        """Drain or stop an agent's engine, or remove a registered one.

        Raises:
            NotFoundError: unknown engine.
            AgentUnreachableError, AgentRejectedError: the agent call failed.
        """
        try:
            owner = self._registry.agent_of(request.engine_id)
            current = self._registry.engine(request.engine_id)
            if owner is None:
                self._registry.remove_engine(request.engine_id)
                self._trackers.pop(request.engine_id, None)
                await self.store.delete_registered(request.engine_id)
                info = msgspec.structs.replace(
                    current,
                    state=EngineState.STOPPED,
                    reason="unregistered",
                    state_changed_at=self.clock.time(),
                )
            else:
                _, agent_url = owner
                api = self._agents_api()
                if request.drain:
                    answer = await api.drain(agent_url, request.engine_id, request.timeout_s)
                    fallback = EngineState.DRAINING
                else:
                    answer = await api.delete(agent_url, request.engine_id)
                    fallback = EngineState.STOPPED
                info = answer or msgspec.structs.replace(
                    current, state=fallback, reason="stop requested"
                )
        except CoordinatorError as exc:
            await self.audit(who, "engine.stop", request.engine_id, f"rejected: {exc.message}")
            raise
        if owner is None:
            await self._publish(self._registry.revision)
        action = "drain" if request.drain and owner is not None else "stop"
        await self.audit(who, f"engine.{action}", request.engine_id, f"ok: {info.state.value}")
        return info

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        return await self.store.audit_log(limit)

    # -------------------------------------------------------------- internals

    def _tracker(self) -> ProbeTracker:
        return ProbeTracker(
            failures_to_error=self.settings.probe_failures,
            successes_to_start=self.settings.probe_successes_to_start,
            successes_to_recover=self.settings.probe_successes_to_recover,
        )

    def _notify(self) -> None:
        self._publisher.notify()

    async def _publish(self, revision: int) -> None:
        # Revisions are reserved in blocks (like a database sequence cache): the store
        # holds a mark no issued revision exceeds, so a restart continues above every
        # revision a watcher may have seen, with one write per block instead of per bump.
        if revision > self._reserved:
            self._reserved = revision + REVISION_BLOCK
            await self.store.save_revision(self._reserved)
        self._notify()

    async def _agent_writer_loop(self) -> None:
        while True:
            kick = self._agent_kick = anyio.Event()
            if not self._agent_writes:
                await kick.wait()
            try:
                await self._flush_agents()
            except Exception:
                log.exception("could not persist agent records; retrying in 1 s")
                await anyio.sleep(1.0)

    async def _flush_agents(self) -> None:
        batch, self._agent_writes = self._agent_writes, {}
        if not batch:
            return
        try:
            await self.store.put_agents(list(batch.values()))
        except BaseException:
            for agent_id, record in batch.items():
                self._agent_writes.setdefault(agent_id, record)
            raise

    async def audit(self, who: str, action: str, target: str, result: str) -> None:
        """Record a control action (who, what, on what, result); never raises.

        Fields are capped in length: a rejected caller chooses ``target`` (a path
        segment) and must not be able to grow the store or the log without bound.
        """
        entry = AuditEntry(
            at=self.clock.time(),
            who=who[:128],
            action=action[:64],
            target=target[:256],
            result=result[:512],
        )
        log.info("audit who=%s action=%s target=%s result=%s", who, action, target, result)
        try:
            await self.store.audit(entry)
        except Exception:  # the audit trail must not turn a control action into a 500
            log.exception("could not write audit entry %r", entry)

    async def _check_host(self, host: str, port: int) -> None:
        try:
            addresses = await self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            # UnicodeError: a name IDNA cannot encode (idna.IDNAError), not a server fault.
            raise UrlPolicyError(f"host {host!r} does not resolve: {exc}", param="url") from None
        check_addresses(host, addresses, self._networks)

    def _agents_api(self) -> AgentApi:
        if self._api is None:
            raise RuntimeError("Coordinator is not started")
        return self._api

    async def _sweep_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.sweep_interval_s)
            try:
                outcome = self._registry.expire()
                for agent_id in outcome.lost_agents:
                    await self.audit("coordinator", "agent.lost", agent_id, "lease expired")
                if outcome.deleted_engines:
                    log.info(
                        "deleted engines of lost hosts: %s", ", ".join(outcome.deleted_engines)
                    )
                if outcome.changed:
                    await self._publish(outcome.revision)
            except Exception:
                log.exception("lease sweep failed; retrying next interval")

    async def _probe_loop(self) -> None:
        while True:
            kick = self._probe_kick = anyio.Event()
            engines = self._registry.registered_engines()
            if engines:
                async with anyio.create_task_group() as task_group:
                    for engine in engines:
                        task_group.start_soon(self._probe_one, engine)
            with anyio.move_on_after(self.settings.probe_interval_s):
                await kick.wait()

    async def _probe_one(self, engine: EngineInfo) -> None:
        ok, detail = await self._probe(engine)
        tracker = self._trackers.get(engine.id)
        if tracker is None or not self._registry.has_engine(engine.id):
            return  # removed while the probe ran
        moved = tracker.record(ok, detail)
        if moved is not None and self._registry.set_state(engine.id, moved.state, moved.reason):
            log.info("registered engine %s -> %s (%s)", engine.id, moved.state.value, moved.reason)
            try:
                await self._publish(self._registry.revision)
            except Exception:
                log.exception("could not persist revision after probe of %s", engine.id)
                self._notify()

    async def _probe(self, engine: EngineInfo) -> tuple[bool, str]:
        try:
            await self._check_host(engine.host, engine.port)
        except UrlPolicyError as exc:
            return False, exc.message
        return await self._agents_api().probe_health(engine.url, self.settings.probe_timeout_s)
