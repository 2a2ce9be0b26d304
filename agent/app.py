"""The agent's HTTP API (Litestar), over an :class:`~sage.unified.agent.service.Agent`.

Routes (JSON; errors are OpenAI-shaped ``{"error": {"message", "type", "param", "code"}}``):

=========================================  ==============================================
``GET  /healthz``                          liveness: the agent's event loop ticks
``GET  /readyz``                           200 once reconciled and the coordinator is
                                           reachable (or none is configured), else 503
``GET  /v1/engines``                       ``{"engines": [EngineInfo, ...]}``
``POST /v1/engines``                       EngineSpec → 201 EngineInfo (STARTING)
``GET  /v1/engines/{id}``                  EngineInfo
``POST /v1/engines/{id}/drain``            ``?wait=true&timeout_s=`` → 200 STOPPED, or 202
                                           at once with ``wait=false``
``DELETE /v1/engines/{id}``                stop now → 200 EngineInfo (STOPPED)
``GET  /v1/engines/{id}/logs?tail=N``      ``{"engine_id", "lines": [...]}``
``GET  /v1/gpus``                          ``{"gpus": [...], "error": reason | null}``
``POST /v1/gpus/{index}/clear``            lift a GPU's quarantine → 200 GpuInfo; 404
                                           ``gpu_not_found``
``GET  /metrics``                          Prometheus text, ``sage_agent_*``
=========================================  ==============================================

Status codes for a rejected launch: malformed JSON 400; a field that fails
validation or an unknown runtime 422; model not allowed 403; port taken or no free
GPU 409. Nothing is spawned on rejection.

Authentication (when a token is configured): on a loopback bind, mutating routes
(POST, DELETE) need ``Authorization: Bearer <token>`` and reads are open to local
users; on any other bind every route except ``/healthz`` and ``/readyz`` needs it
(engine specs, logs and GPU inventory are not for the network at large). A
non-loopback bind without a token is refused at start
(:meth:`AgentSettings.check_bind_safety`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import anyio
from litestar import Litestar, Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.types import Guard
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sage.unified.agent.errors import GpuNotFoundError
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.sdk.auth import TokenSet, bearer_token, is_loopback_host
from sage.unified.sdk.models import EngineInfo, GpuInfo
from sage.unified.sdk.protocol import AgentApi, AgentGpuList, EngineList, EngineLogs, HealthStatus
from sage.unified.sdk.protocol.server import (
    allow_header_middleware,
    browser_guard,
    decode_body,
    error_response,
    exception_handlers,
    metrics_response,
    openapi_config,
    route,
)
from sage.unified.sdk.states import EngineState

__all__ = ["AgentMetricsCollector", "create_agent_app"]

_LIVENESS_STALE_S = 5.0
_MAX_TAIL = 10_000
_MAX_SPEC_BYTES = 64 * 1024
_ENGINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")

_AGENT = AgentApi
log = logging.getLogger("sage.unified.agent")


def _error(status: int, message: str, code: str) -> Response[bytes]:
    return error_response(status, message, code=code)


class AgentMetricsCollector(Collector):
    """Reads the agent's state at scrape time (no counters to keep in sync)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        engines = agent.engines()
        by_state = GaugeMetricFamily("sage_agent_engines", "Engines by state", labels=["state"])
        for state in EngineState:
            by_state.add_metric([state.value], sum(1 for e in engines if e.state is state))
        yield by_state
        yield CounterMetricFamily(
            "sage_agent_engine_restarts", "Engine restarts by the agent", value=agent.restarts_total
        )
        yield CounterMetricFamily(
            "sage_agent_probe_failures", "Failed engine probes", value=agent.probe_failures_total
        )
        reporter = agent.reporter
        yield CounterMetricFamily(
            "sage_agent_report_failures",
            "Reports the coordinator did not accept",
            value=reporter.failures if reporter else 0,
        )
        age = GaugeMetricFamily(
            "sage_agent_heartbeat_age_seconds",
            "Seconds since the coordinator last accepted a report",
        )
        last = reporter.last_success_at if reporter else None
        age.add_metric([], anyio.current_time() - last if last is not None else float("nan"))
        yield age
        gpus, _ = agent.gpus()
        used = GaugeMetricFamily(
            "sage_agent_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"]
        )
        total = GaugeMetricFamily("sage_agent_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        quarantined = GaugeMetricFamily(
            "sage_agent_gpu_quarantined",
            "1 while a GPU is quarantined after a fault",
            labels=["gpu"],
        )
        for gpu in gpus:
            quarantined.add_metric([str(gpu.index)], 0 if gpu.healthy else 1)
            if gpu.memory_used_bytes is not None:
                used.add_metric([str(gpu.index)], gpu.memory_used_bytes)
            if gpu.memory_total_bytes is not None:
                total.add_metric([str(gpu.index)], gpu.memory_total_bytes)
        yield used
        yield total
        yield quarantined


def create_agent_app(agent: Agent) -> Litestar:
    """Build the agent's Litestar app around a running (entered) :class:`Agent`.

    The app owns no resources: the caller enters ``agent`` before serving requests
    and exits it after, which is what lets the gateway embed the agent.
    """
    settings = agent.settings
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentMetricsCollector(agent))

    @route(_AGENT.HEALTHZ, sync_to_thread=False)
    def healthz() -> Response[HealthStatus] | Response[bytes]:
        stale = anyio.current_time() - agent.alive_at
        if stale > _LIVENESS_STALE_S:
            return _error(503, f"agent loop has not ticked for {stale:.1f} s", "loop_stalled")
        return Response(HealthStatus(status="ok"))

    @route(_AGENT.READYZ, sync_to_thread=False)
    def readyz() -> Response[HealthStatus] | Response[bytes]:
        if not agent.ready:
            return _error(503, "agent is reconciling its engines", "not_ready")
        if not agent.coordinator_reachable:
            detail = agent.reporter.last_error if agent.reporter else None
            return _error(503, f"coordinator not reachable: {detail}", "coordinator_unreachable")
        return Response(HealthStatus(status="ready"))

    @route(_AGENT.GPUS, sync_to_thread=False)
    def gpus() -> AgentGpuList:
        found, error = agent.gpus()
        return AgentGpuList(gpus=found, error=error)

    @route(_AGENT.CLEAR_GPU)
    async def clear_gpu(index: FromPath[str]) -> GpuInfo:
        if not (index.isascii() and index.isdigit()):
            raise GpuNotFoundError(f"GPU index {index!r} is not a number")
        return await agent.clear_gpu(int(index))

    @route(_AGENT.METRICS, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return metrics_response(generate_latest(registry))

    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            *_engine_routes(agent),
            gpus,
            clear_gpu,
            metrics,
        ],
        guards=[browser_guard(settings.browser_policy()), _auth_guard(settings)],
        exception_handlers=exception_handlers(log),
        # The process sets up logging (sdk.logsetup); Litestar's would raise it to INFO.
        logging_config=None,
        openapi_config=openapi_config("SAGE Unified Gateway agent"),
        middleware=[allow_header_middleware],
        debug=False,
    )


def _auth_guard(settings: AgentSettings) -> Guard:
    """Writes need the agent token when one is set; reads too on a non-loopback bind."""
    tokens = TokenSet([settings.token.get_secret_value()] if settings.token else [])
    reads_need_token = bool(tokens) and not is_loopback_host(settings.bind_host)

    def auth_guard(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        if not tokens or connection.url.path in ("/healthz", "/readyz"):
            return
        mutating = connection.scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS")
        if not (mutating or reads_need_token):
            return
        if not tokens.verify(bearer_token(connection.headers.get("authorization"))):
            raise NotAuthorizedException(
                "missing or invalid agent token (Authorization: Bearer <SAGE_AGENT_TOKEN>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return auth_guard


def _engine_routes(agent: Agent) -> list[HTTPRouteHandler]:
    """List, start, read, drain, stop engines and read their logs."""

    @route(_AGENT.ENGINES, sync_to_thread=False)
    def list_engines() -> EngineList:
        return EngineList(engines=agent.engines())

    @route(_AGENT.START_ENGINE)
    async def start_engine(
        request: Request[Any, Any, Any], engine_id: FromQuery[str | None] = None
    ) -> EngineInfo:
        body = await request.body()
        if len(body) > _MAX_SPEC_BYTES:
            raise HTTPException(status_code=413, detail="engine spec too large")
        if engine_id is not None and not _ENGINE_ID.fullmatch(engine_id):
            raise HTTPException(
                status_code=422, detail="engine_id must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
            )
        return await agent.start_engine(decode_body(_AGENT.START_ENGINE, body), engine_id)

    @route(_AGENT.ENGINE, sync_to_thread=False)
    def get_engine(engine_id: FromPath[str]) -> EngineInfo:
        return agent.engine(engine_id)

    @route(_AGENT.DRAIN_ENGINE)
    async def drain_engine(
        engine_id: FromPath[str],
        wait: FromQuery[bool] = True,
        timeout_s: FromQuery[float | None] = None,
    ) -> Response[EngineInfo]:
        if timeout_s is not None and not 0 < timeout_s <= 86400:
            raise HTTPException(status_code=422, detail="timeout_s must be in (0, 86400]")
        info = await agent.drain_engine(engine_id, wait=wait, timeout_s=timeout_s)
        return Response(info, status_code=200 if wait else 202)

    @route(_AGENT.STOP_ENGINE)
    async def stop_engine(engine_id: FromPath[str]) -> EngineInfo:
        return await agent.stop_engine(engine_id)

    @route(_AGENT.ENGINE_LOGS)
    async def engine_logs(engine_id: FromPath[str], tail: FromQuery[int] = 100) -> EngineLogs:
        if not 0 <= tail <= _MAX_TAIL:
            raise HTTPException(status_code=422, detail=f"tail must be in [0, {_MAX_TAIL}]")
        return EngineLogs(engine_id=engine_id, lines=await agent.logs(engine_id, tail))

    return [list_engines, start_engine, get_engine, drain_engine, stop_engine, engine_logs]
