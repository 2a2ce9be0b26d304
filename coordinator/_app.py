"""HTTP surface: the management and agent routes, and the standalone coordinator app.

Every route is a declared endpoint (:class:`~sage.unified.sdk.protocol.ControlPlaneApi`):
its method, path, status and body type come from the declaration. The gateway mounts
:func:`create_management_router` (over the embedded coordinator, or over a remote one)
and :func:`create_agents_router`; :func:`create_coordinator_app` is the standalone
process (``sage coordinator run``). Every error body is OpenAI-shaped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from litestar import Litestar, Request, Response, Router
from litestar.params import FromPath, FromQuery

from sage.unified.coordinator._api import ControlPlane, ControlPlaneSession
from sage.unified.coordinator._app_fleet import fleet_routes
from sage.unified.coordinator._service import Coordinator
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import Store
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.errors import WireError
from sage.unified.sdk.models import AgentReportReply, EngineInfo
from sage.unified.sdk.protocol import (
    AgentList,
    AuditLog,
    BrowserPolicy,
    ControlPlaneApi,
    CoordinatorReadiness,
    Endpoint,
    EngineList,
    GpuHostList,
    HealthStatus,
)
from sage.unified.sdk.protocol.server import (
    allow_header_middleware,
    browser_guard,
    decode_body,
    exception_handlers,
    metrics_response,
    openapi_config,
    route,
)

__all__ = [
    "EXCEPTION_HANDLERS",
    "create_agents_router",
    "create_coordinator_app",
    "create_management_router",
]

log = logging.getLogger("sage.unified.coordinator")

T = TypeVar("T")
API = ControlPlaneApi

EXCEPTION_HANDLERS = exception_handlers(log)
"""Exception handlers mapping every error to an OpenAI-shaped body."""


def create_management_router(plane: ControlPlane, browser: BrowserPolicy) -> Router:
    """``/v1/management/*``: backends (watch), engines, agents, GPUs, audit, and the fleet
    (deployments, rollouts, cordon and drain, GPU clear). Admin token.

    ``browser`` says which ``Host`` names and web origins may reach it from a browser.
    """

    async def session(request: Request[Any, Any, Any], target: str) -> ControlPlaneSession:
        return await plane.authorize(request.headers.get("authorization"), target)

    async def body(
        request: Request[Any, Any, Any],
        endpoint: Endpoint[T, Any],
        caller: ControlPlaneSession,
        action: str,
    ) -> T:
        try:
            return decode_body(endpoint, await request.body())
        except WireError as exc:
            await caller.refused(action, exc)
            raise

    @route(API.BACKENDS)
    async def backends(
        request: Request[Any, Any, Any],
        after: FromQuery[int | None] = None,
        wait: FromQuery[float] = 0.0,
    ) -> Response[bytes]:
        caller = await session(request, "backends")
        payload = await caller.backends_json(after, wait)
        return Response(payload, media_type="application/json")

    @route(API.ENGINES)
    async def list_engines(request: Request[Any, Any, Any]) -> EngineList:
        engines = await (await session(request, "engines")).engines()
        return EngineList(engines=engines, count=len(engines))

    @route(API.ENGINE)
    async def get_engine(request: Request[Any, Any, Any], engine_id: FromPath[str]) -> EngineInfo:
        return await (await session(request, engine_id)).engine(engine_id)

    @route(API.REGISTER_ENGINE)
    async def register(request: Request[Any, Any, Any]) -> EngineInfo:
        caller = await session(request, "engines/register")
        return await caller.register_engine(
            await body(request, API.REGISTER_ENGINE, caller, "engine.register")
        )

    @route(API.START_ENGINE)
    async def start(request: Request[Any, Any, Any]) -> EngineInfo:
        caller = await session(request, "engines/start")
        return await caller.start_engine(
            await body(request, API.START_ENGINE, caller, "engine.start")
        )

    @route(API.STOP_ENGINE)
    async def stop(request: Request[Any, Any, Any]) -> EngineInfo:
        caller = await session(request, "engines/stop")
        return await caller.stop_engine(await body(request, API.STOP_ENGINE, caller, "engine.stop"))

    @route(API.GPUS)
    async def gpu(request: Request[Any, Any, Any]) -> GpuHostList:
        return GpuHostList(hosts=await (await session(request, "gpu")).gpu_hosts())

    @route(API.AGENTS)
    async def agents(request: Request[Any, Any, Any]) -> AgentList:
        return AgentList(agents=await (await session(request, "agents")).agents())

    @route(API.AUDIT)
    async def audit(request: Request[Any, Any, Any], limit: FromQuery[int] = 100) -> AuditLog:
        caller = await session(request, "audit")
        return AuditLog(entries=await caller.audit_log(max(1, min(limit, 1000))))

    return Router(
        path="/",
        route_handlers=[
            backends,
            list_engines,
            get_engine,
            register,
            start,
            stop,
            gpu,
            agents,
            audit,
            *fleet_routes(session, body),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        guards=[browser_guard(browser)],
    )


def create_agents_router(coordinator: Coordinator, browser: BrowserPolicy) -> Router:
    """``PUT /v1/agents/{agent_id}``: agent snapshots (agent token required)."""

    @route(API.REPORT)
    async def put_report(
        request: Request[Any, Any, Any], agent_id: FromPath[str]
    ) -> AgentReportReply:
        await coordinator.authenticate(
            "agent", request.headers.get("authorization"), target=agent_id
        )
        report = decode_body(API.REPORT, await request.body())
        return await coordinator.report(agent_id, report)

    return Router(
        path="/",
        route_handlers=[put_report],
        exception_handlers=EXCEPTION_HANDLERS,
        guards=[browser_guard(browser)],
    )


def create_coordinator_app(
    settings: CoordinatorSettings | None = None,
    *,
    coordinator: Coordinator | None = None,
    clock: Clock | None = None,
    store: Store | None = None,
) -> Litestar:
    """The standalone coordinator app: both routers plus ``/health``, ``/readyz``, ``/metrics``.

    The coordinator runs in the app's lifespan. Pass ``coordinator`` to serve one you
    built (its settings win); otherwise one is built from ``settings`` (read from the
    environment when omitted).

    Raises:
        ConfigError: unsafe bind (non-loopback without tokens and not ``insecure``).
    """
    if coordinator is None:
        settings = settings or CoordinatorSettings()
        coordinator = Coordinator(settings, clock=clock, store=store)
    coordinator.settings.check_bind()
    coord = coordinator

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with coord:
            yield

    @route(API.HEALTH, sync_to_thread=False)
    def health() -> HealthStatus:
        return HealthStatus(status="ok")

    @route(API.READYZ, sync_to_thread=False)
    def readyz() -> Response[CoordinatorReadiness]:
        ready = coord.ready
        return Response(
            CoordinatorReadiness(ready=ready, revision=coord.revision),
            status_code=200 if ready else 503,
        )

    @route(API.METRICS, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return metrics_response(coord.metrics_text())

    app = Litestar(
        route_handlers=[
            health,
            readyz,
            metrics,
            create_management_router(coord, coord.settings.browser_policy()),
            create_agents_router(coord, coord.settings.browser_policy()),
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        # The process sets up logging (sdk.logsetup); Litestar's would raise it to INFO.
        logging_config=None,
        openapi_config=openapi_config("SAGE Unified Gateway coordinator"),
        middleware=[allow_header_middleware],
    )
    app.state.coordinator = coord
    return app
