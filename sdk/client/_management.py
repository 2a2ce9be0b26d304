"""Typed clients of the control-plane API (management, reports, the table watch) and of
an agent's API.

Each method is one declared endpoint (:mod:`sage.unified.sdk.protocol`) executed by a
caller (:mod:`._executor`); the sync and async clients are twins. Connection failures
raise :class:`GatewayUnreachableError` (one line, fit for a CLI); non-2xx answers raise
:class:`APIStatusError` subclasses; a ``translate_error`` hook turns both into the
caller's own errors.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
import msgspec

from sage.unified.sdk.client._discovery import DiscoveryPolicy
from sage.unified.sdk.client._errors import PERMANENT_ERRORS, InvalidResponseError, SageClientError
from sage.unified.sdk.client._executor import AsyncCaller, ErrorTranslator, RawReply, SyncCaller
from sage.unified.sdk.client._management_fleet import AsyncFleetMethods, SyncFleetMethods
from sage.unified.sdk.models import (
    AgentReport,
    AgentReportReply,
    AgentSummary,
    EngineInfo,
    EngineKind,
    EngineSpec,
    EngineStartRequest,
    EngineStopRequest,
    GpuInfo,
    RegisterEngineRequest,
    RoutingTable,
)
from sage.unified.sdk.protocol import (
    AgentApi,
    AuditRecord,
    ControlPlaneApi,
    GatewayApi,
    HostGpus,
    RoutingApi,
    RoutingDecision,
    RoutingStats,
)

__all__ = [
    "AgentClient",
    "AsyncAgentClient",
    "AsyncGatewayManagementClient",
    "GatewayManagementClient",
    "HostGpus",
]

log = logging.getLogger("sage.unified.sdk.client")

_READY = frozenset({503})
_CP = ControlPlaneApi


def _backends_query(after: int | None, wait: float | None) -> dict[str, Any]:
    return {"after": after, "wait": wait} if after is not None and wait else {}


def _start_query(engine_id: str | None) -> dict[str, Any] | None:
    return {"engine_id": engine_id} if engine_id is not None else None


def _decisions_query(model: str | None, engine: str | None, limit: int) -> dict[str, Any]:
    return {"model": model, "engine": engine, "limit": limit}


def _drain_query(wait: bool, timeout_s: float | None) -> dict[str, Any]:
    return {"wait": wait, "timeout_s": timeout_s}


def _drain_extra_s(wait: bool, timeout_s: float | None) -> float:
    # A waiting drain answers only when the engine stopped (default deadline 300 s + kill).
    return ((timeout_s or 300.0) + 60.0) if wait else 0.0


_STOP_EXTRA_S = 60.0
"""An immediate stop waits for the engine's grace period before SIGKILL."""


def _health_dict(content: bytes) -> dict[str, Any]:
    value = msgspec.json.decode(content) if content else {}
    return value if isinstance(value, dict) else {}


def _readiness(reply: RawReply) -> tuple[bool, dict[str, Any]]:
    try:
        return reply.status < 300, msgspec.json.decode(reply.content, type=dict[str, Any])
    except msgspec.DecodeError as exc:  # ValidationError included
        raise InvalidResponseError(f"{reply.url}: /readyz is not a JSON object") from exc


_CLIENT_DOC = """

    Args:
        url: the service's base URL, or several of the same service (tried healthiest
            first; reads and idempotent commands move on to the next on failure).
        token: the bearer token (admin token for management, agent token for agents).
        timeout: read timeout per call, seconds (long-polls and drains add their wait).
        connect_timeout: seconds.
        trust_env: let httpx read proxies/certificates from the environment.
        transport: an httpx transport (tests).
        http: a connection pool shared with other clients (not closed by this one).
        translate_error: turns SDK errors into the caller's own (raised from them).

    Raises (every method):
        GatewayUnreachableError: no connection.
        APIStatusError: a non-2xx answer (401/403 token, 404 unknown engine, 409 no room...).
        InvalidResponseError: an answer that is not the expected JSON.
"""


class _SyncClient:
    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        trust_env: bool = False,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        translate_error: ErrorTranslator | None = None,
    ) -> None:
        self._caller = SyncCaller(
            url,
            token,
            timeout=timeout,
            connect_timeout=connect_timeout,
            http=http,
            transport=transport,
            trust_env=trust_env,
            translate_error=translate_error,
        )

    @property
    def url(self) -> str:
        return self._caller.url

    def close(self) -> None:
        self._caller.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _AsyncClient:
    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        trust_env: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
        translate_error: ErrorTranslator | None = None,
    ) -> None:
        self._caller = AsyncCaller(
            url,
            token,
            timeout=timeout,
            connect_timeout=connect_timeout,
            http=http,
            transport=transport,
            trust_env=trust_env,
            translate_error=translate_error,
        )

    @property
    def url(self) -> str:
        return self._caller.url

    async def aclose(self) -> None:
        await self._caller.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class GatewayManagementClient(SyncFleetMethods, _SyncClient):
    __doc__ = (
        "Sync client of the control plane (``/v1/management/*`` on a gateway or a "
        "standalone coordinator)." + _CLIENT_DOC
    )

    def engines(self) -> list[EngineInfo]:
        """Every engine the control plane knows."""
        return self._caller.call(_CP.ENGINES).engines

    def engine(self, engine_id: str) -> EngineInfo:
        return self._caller.call(_CP.ENGINE, path={"engine_id": engine_id})

    def start_engine(self, spec: EngineSpec, host: str | None = None) -> EngineInfo:
        """Start an engine (placed automatically unless ``host`` names an agent id or address)."""
        return self._caller.call(_CP.START_ENGINE, EngineStartRequest(spec=spec, host=host))

    def stop_engine(
        self, engine_id: str, drain: bool = True, timeout_s: float | None = None
    ) -> EngineInfo:
        """Drain (default) or stop an engine; unregisters an engine no agent manages."""
        request = EngineStopRequest(engine_id=engine_id, drain=drain, timeout_s=timeout_s)
        return self._caller.call(_CP.STOP_ENGINE, request)

    def register_engine(
        self, model: str, url: str, kind: EngineKind = EngineKind.LLM, engine_id: str | None = None
    ) -> EngineInfo:
        """Register an engine that no agent manages."""
        request = RegisterEngineRequest(model=model, url=url, kind=kind, id=engine_id)
        return self._caller.call(_CP.REGISTER_ENGINE, request)

    def backends(self, after: int | None = None, wait: float | None = None) -> RoutingTable:
        """The routing table; with ``after``/``wait``, long-poll until the revision passes ``after``."""
        return self._caller.call(
            _CP.BACKENDS, query=_backends_query(after, wait), extra_read_s=wait or 0.0
        )

    def gpus(self) -> list[HostGpus]:
        """The GPUs of every agent's host."""
        return self._caller.call(_CP.GPUS).hosts

    def agents(self) -> list[AgentSummary]:
        return self._caller.call(_CP.AGENTS).agents

    def audit(self, limit: int = 100) -> list[AuditRecord]:
        """Control actions, newest first."""
        return self._caller.call(_CP.AUDIT, query={"limit": limit}).entries

    def report(
        self, agent_id: str, report: AgentReport, *, timeout_s: float | None = None
    ) -> AgentReportReply:
        """Push an agent's snapshot (what agents do every heartbeat); ``timeout_s`` bounds
        each URL's attempt (connect and read) instead of the client's timeout."""
        return self._caller.call(
            _CP.REPORT, report, path={"agent_id": agent_id}, read_timeout_s=timeout_s
        )

    def routing_decisions(
        self, model: str | None = None, engine: str | None = None, limit: int = 100
    ) -> list[RoutingDecision]:
        """The gateway's recent routing decisions, newest first (its own ledger: with
        several gateways, ask each)."""
        query = _decisions_query(model, engine, limit)
        return self._caller.call(RoutingApi.DECISIONS, query=query).decisions

    def routing_stats(self) -> RoutingStats:
        """The gateway's cache-capture ledger per model and engine, with health signals."""
        return self._caller.call(RoutingApi.STATS)

    def health(self) -> dict[str, Any]:
        """``GET /health`` (liveness)."""
        return _health_dict(self._caller.send(_CP.HEALTH).content)

    def readyz(self) -> bool:
        """``GET /readyz``: ``True`` when ready, ``False`` on 503."""
        return self._caller.send(_CP.READYZ, expect=_READY).status < 300

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """A gateway's ``GET /readyz``: ready (``False`` on 503), and its body (``mode``,
        ``status``...); :class:`InvalidResponseError` if the body is not a JSON object."""
        return _readiness(self._caller.send(GatewayApi.READYZ, expect=_READY))


class AsyncGatewayManagementClient(AsyncFleetMethods, _AsyncClient):
    __doc__ = (
        "Async client of the control plane (same methods as the sync one, plus "
        ":meth:`watch_table`)." + _CLIENT_DOC
    )

    async def engines(self) -> list[EngineInfo]:
        return (await self._caller.call(_CP.ENGINES)).engines

    async def engine(self, engine_id: str) -> EngineInfo:
        return await self._caller.call(_CP.ENGINE, path={"engine_id": engine_id})

    async def start_engine(self, spec: EngineSpec, host: str | None = None) -> EngineInfo:
        return await self._caller.call(_CP.START_ENGINE, EngineStartRequest(spec=spec, host=host))

    async def stop_engine(
        self, engine_id: str, drain: bool = True, timeout_s: float | None = None
    ) -> EngineInfo:
        request = EngineStopRequest(engine_id=engine_id, drain=drain, timeout_s=timeout_s)
        return await self._caller.call(_CP.STOP_ENGINE, request)

    async def register_engine(
        self, model: str, url: str, kind: EngineKind = EngineKind.LLM, engine_id: str | None = None
    ) -> EngineInfo:
        request = RegisterEngineRequest(model=model, url=url, kind=kind, id=engine_id)
        return await self._caller.call(_CP.REGISTER_ENGINE, request)

    async def backends(self, after: int | None = None, wait: float | None = None) -> RoutingTable:
        return await self._caller.call(
            _CP.BACKENDS, query=_backends_query(after, wait), extra_read_s=wait or 0.0
        )

    async def gpus(self) -> list[HostGpus]:
        return (await self._caller.call(_CP.GPUS)).hosts

    async def agents(self) -> list[AgentSummary]:
        return (await self._caller.call(_CP.AGENTS)).agents

    async def audit(self, limit: int = 100) -> list[AuditRecord]:
        return (await self._caller.call(_CP.AUDIT, query={"limit": limit})).entries

    async def report(
        self, agent_id: str, report: AgentReport, *, timeout_s: float | None = None
    ) -> AgentReportReply:
        return await self._caller.call(
            _CP.REPORT, report, path={"agent_id": agent_id}, read_timeout_s=timeout_s
        )

    async def routing_decisions(
        self, model: str | None = None, engine: str | None = None, limit: int = 100
    ) -> list[RoutingDecision]:
        query = _decisions_query(model, engine, limit)
        return (await self._caller.call(RoutingApi.DECISIONS, query=query)).decisions

    async def routing_stats(self) -> RoutingStats:
        return await self._caller.call(RoutingApi.STATS)

    async def health(self) -> dict[str, Any]:
        return _health_dict((await self._caller.send(_CP.HEALTH)).content)

    async def readyz(self) -> bool:
        return (await self._caller.send(_CP.READYZ, expect=_READY)).status < 300

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        return _readiness(await self._caller.send(GatewayApi.READYZ, expect=_READY))

    async def watch_table(
        self,
        *,
        wait_s: float = 30.0,
        error_max_s: float = 10.0,
        on_error: Callable[[SageClientError], None] | None = None,
    ) -> AsyncGenerator[RoutingTable, None]:
        """Yield the routing table now, at every revision change and once more when the
        control plane answers again after a failure, until cancelled.

        Long-polls ``backends?after=<revision>&wait=<wait_s>``, so a change arrives as soon
        as it is published. A failed read never ends the iteration: ``on_error`` gets the
        error (the last table stays the caller's to use) and the next read waits a
        doubling backoff from 0.5 s up to ``error_max_s`` (straight to it for 401/403).
        A revision lower than the last one is yielded too: a coordinator that lost its
        store counts afresh.

        Cancellation: safe at any point; nothing is half-consumed.
        """
        policy = DiscoveryPolicy(
            refresh_interval_s=wait_s, max_wait_s=wait_s, error_max_s=error_max_s
        )
        revision: int | None = None
        failing = False
        while True:
            after, wait = policy.request(revision)
            started = anyio.current_time()
            try:
                table = await self.backends(after, wait)
            except SageClientError as exc:
                failing = True
                if on_error is not None:
                    on_error(exc)
                delay = policy.after_error(permanent=isinstance(exc, PERMANENT_ERRORS))
            else:
                changed = table.revision != revision
                revision = table.revision
                delay = policy.after_success(
                    asked_wait=wait, changed=changed, elapsed=anyio.current_time() - started
                )
                if changed or failing:
                    failing = False
                    yield table
            await anyio.sleep(delay)


class AgentClient(_SyncClient):
    __doc__ = "Sync client of one agent's API." + _CLIENT_DOC

    def engines(self) -> list[EngineInfo]:
        return self._caller.call(AgentApi.ENGINES).engines

    def engine(self, engine_id: str) -> EngineInfo:
        return self._caller.call(AgentApi.ENGINE, path={"engine_id": engine_id})

    def start_engine(self, spec: EngineSpec, engine_id: str | None = None) -> EngineInfo:
        """Launch an engine; with ``engine_id`` the start is idempotent (a repeat returns
        the engine already started under that id)."""
        return self._caller.call(AgentApi.START_ENGINE, spec, query=_start_query(engine_id))

    def drain(
        self, engine_id: str, wait: bool = False, timeout_s: float | None = None
    ) -> EngineInfo:
        """Drain an engine; with ``wait`` the call returns when it has stopped."""
        return self._caller.call(
            AgentApi.DRAIN_ENGINE,
            path={"engine_id": engine_id},
            query=_drain_query(wait, timeout_s),
            extra_read_s=_drain_extra_s(wait, timeout_s),
        )

    def stop(self, engine_id: str) -> EngineInfo:
        """Stop an engine now (SIGTERM, then SIGKILL after the agent's grace)."""
        return self._caller.call(
            AgentApi.STOP_ENGINE, path={"engine_id": engine_id}, extra_read_s=_STOP_EXTRA_S
        )

    def logs(self, engine_id: str, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the engine's log."""
        return self._caller.call(
            AgentApi.ENGINE_LOGS, path={"engine_id": engine_id}, query={"tail": tail}
        ).lines

    def gpus(self) -> list[GpuInfo]:
        return self._caller.call(AgentApi.GPUS).gpus

    def clear_gpu(self, index: int) -> GpuInfo:
        """Lift GPU ``index``'s fault quarantine (idempotent)."""
        return self._caller.call(AgentApi.CLEAR_GPU, path={"index": index})

    def healthz(self) -> dict[str, Any]:
        return _health_dict(self._caller.send(AgentApi.HEALTHZ).content)

    def readyz(self) -> bool:
        return self._caller.send(AgentApi.READYZ, expect=_READY).status < 300


class AsyncAgentClient(_AsyncClient):
    __doc__ = "Async client of one agent's API (same methods as the sync one)." + _CLIENT_DOC

    async def engines(self) -> list[EngineInfo]:
        return (await self._caller.call(AgentApi.ENGINES)).engines

    async def engine(self, engine_id: str) -> EngineInfo:
        return await self._caller.call(AgentApi.ENGINE, path={"engine_id": engine_id})

    async def start_engine(self, spec: EngineSpec, engine_id: str | None = None) -> EngineInfo:
        return await self._caller.call(AgentApi.START_ENGINE, spec, query=_start_query(engine_id))

    async def drain(
        self, engine_id: str, wait: bool = False, timeout_s: float | None = None
    ) -> EngineInfo:
        return await self._caller.call(
            AgentApi.DRAIN_ENGINE,
            path={"engine_id": engine_id},
            query=_drain_query(wait, timeout_s),
            extra_read_s=_drain_extra_s(wait, timeout_s),
        )

    async def stop(self, engine_id: str) -> EngineInfo:
        return await self._caller.call(
            AgentApi.STOP_ENGINE, path={"engine_id": engine_id}, extra_read_s=_STOP_EXTRA_S
        )

    async def logs(self, engine_id: str, tail: int = 100) -> list[str]:
        reply = await self._caller.call(
            AgentApi.ENGINE_LOGS, path={"engine_id": engine_id}, query={"tail": tail}
        )
        return reply.lines

    async def gpus(self) -> list[GpuInfo]:
        return (await self._caller.call(AgentApi.GPUS)).gpus

    async def clear_gpu(self, index: int) -> GpuInfo:
        """Lift GPU ``index``'s fault quarantine (idempotent)."""
        return await self._caller.call(AgentApi.CLEAR_GPU, path={"index": index})

    async def healthz(self) -> dict[str, Any]:
        return _health_dict((await self._caller.send(AgentApi.HEALTHZ)).content)

    async def readyz(self) -> bool:
        return (await self._caller.send(AgentApi.READYZ, expect=_READY)).status < 300
