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

from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
from litestar import Litestar, Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.config import OpenAPIConfig
from litestar.params import FromPath, FromQuery
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sage.unified.agent.errors import AgentError
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import is_loopback
from sage.unified.sdk.auth import TokenSet, bearer_token
from sage.unified.sdk.models import EngineInfo, EngineSpec, ErrorBody, GpuInfo, error_body
from sage.unified.sdk.states import EngineState

__all__ = ["AgentMetricsCollector", "create_agent_app"]

_LIVENESS_STALE_S = 5.0
_MAX_TAIL = 10_000
_MAX_SPEC_BYTES = 64 * 1024

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "service_unavailable",
}


class EngineList(msgspec.Struct, kw_only=True):
    engines: list[EngineInfo]


class GpuList(msgspec.Struct, kw_only=True):
    gpus: list[GpuInfo]
    error: str | None


class EngineLogs(msgspec.Struct, kw_only=True):
    engine_id: str
    lines: list[str]


class Status(msgspec.Struct, kw_only=True):
    status: str
    reason: str | None = None


def _error(status: int, message: str, code: str | None = None) -> Response[ErrorBody]:
    type_ = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return Response(error_body(message, type_, code=code), status_code=status)


def _agent_error(_request: Request[Any, Any, Any], exc: AgentError) -> Response[ErrorBody]:
    return _error(exc.status, exc.message, exc.code)


def _http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    headers = dict(exc.headers or {})
    response = _error(exc.status_code, str(exc.detail), None)
    response.headers.update(headers)
    return response


def _internal_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    return _error(500, f"internal error: {type(exc).__name__}", "internal_error")


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
        for gpu in gpus:
            if gpu.memory_used_bytes is not None:
                used.add_metric([str(gpu.index)], gpu.memory_used_bytes)
            if gpu.memory_total_bytes is not None:
                total.add_metric([str(gpu.index)], gpu.memory_total_bytes)
        yield used
        yield total


def create_agent_app(agent: Agent) -> Litestar:
    """Build the agent's Litestar app around a running (entered) :class:`Agent`.

    The app owns no resources: the caller enters ``agent`` before serving requests
    and exits it after, which is what lets the gateway embed the agent.
    """
    settings = agent.settings
    tokens = TokenSet([settings.token.get_secret_value()] if settings.token else [])
    reads_need_token = bool(tokens) and not is_loopback(settings.bind_host)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentMetricsCollector(agent))

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

    @get("/healthz", sync_to_thread=False)
    def healthz() -> Response[Status] | Response[ErrorBody]:
        stale = anyio.current_time() - agent.alive_at
        if stale > _LIVENESS_STALE_S:
            return _error(503, f"agent loop has not ticked for {stale:.1f} s", "loop_stalled")
        return Response(Status(status="ok"))

    @get("/readyz", sync_to_thread=False)
    def readyz() -> Response[Status] | Response[ErrorBody]:
        if not agent.ready:
            return _error(503, "agent is reconciling its engines", "not_ready")
        if not agent.coordinator_reachable:
            detail = agent.reporter.last_error if agent.reporter else None
            return _error(503, f"coordinator not reachable: {detail}", "coordinator_unreachable")
        return Response(Status(status="ready"))

    @get("/v1/engines", sync_to_thread=False)
    def list_engines() -> EngineList:
        return EngineList(engines=agent.engines())

    @post("/v1/engines", status_code=201)
    async def start_engine(request: Request[Any, Any, Any]) -> EngineInfo:
        body = await request.body()
        if len(body) > _MAX_SPEC_BYTES:
            raise HTTPException(status_code=413, detail="engine spec too large")
        try:
            spec = msgspec.json.decode(body, type=EngineSpec)
        except msgspec.ValidationError as exc:
            raise HTTPException(status_code=422, detail=f"invalid engine spec: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HTTPException(status_code=400, detail=f"malformed JSON: {exc}") from None
        return await agent.start_engine(spec)

    @get("/v1/engines/{engine_id:str}", sync_to_thread=False)
    def get_engine(engine_id: FromPath[str]) -> EngineInfo:
        return agent.engine(engine_id)

    @post("/v1/engines/{engine_id:str}/drain", status_code=200)
    async def drain_engine(
        engine_id: FromPath[str],
        wait: FromQuery[bool] = True,
        timeout_s: FromQuery[float | None] = None,
    ) -> Response[EngineInfo]:
        if timeout_s is not None and not 0 < timeout_s <= 86400:
            raise HTTPException(status_code=422, detail="timeout_s must be in (0, 86400]")
        info = await agent.drain_engine(engine_id, wait=wait, timeout_s=timeout_s)
        return Response(info, status_code=200 if wait else 202)

    @delete("/v1/engines/{engine_id:str}", status_code=200)
    async def stop_engine(engine_id: FromPath[str]) -> EngineInfo:
        return await agent.stop_engine(engine_id)

    @get("/v1/engines/{engine_id:str}/logs")
    async def engine_logs(engine_id: FromPath[str], tail: FromQuery[int] = 100) -> EngineLogs:
        if not 0 <= tail <= _MAX_TAIL:
            raise HTTPException(status_code=422, detail=f"tail must be in [0, {_MAX_TAIL}]")
        return EngineLogs(engine_id=engine_id, lines=await agent.logs(engine_id, tail))

    @get("/v1/gpus", sync_to_thread=False)
    def gpus() -> GpuList:
        found, error = agent.gpus()
        return GpuList(gpus=found, error=error)

    @get("/metrics", sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            list_engines,
            start_engine,
            get_engine,
            drain_engine,
            stop_engine,
            engine_logs,
            gpus,
            metrics,
        ],
        guards=[auth_guard],
        exception_handlers={
            AgentError: _agent_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        # The API description is served at /schema/openapi.json (also exported to docs/openapi/).
        openapi_config=OpenAPIConfig(
            title="SAGE Unified Gateway agent", version="1", create_examples=False
        ),
        debug=False,
    )
