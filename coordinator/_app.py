"""HTTP surface: Litestar routers for the management and agent APIs, and the standalone app.

The gateway mounts :func:`create_management_router` and :func:`create_agents_router`
on its own app in embedded mode; :func:`create_coordinator_app` is the standalone
process (``sage coordinator run``). Request bodies are decoded here with msgspec so
the status is ours: malformed JSON → 400, a well-formed body that fails validation
→ 422 with the field in ``param``. Every error body is OpenAI-shaped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response, Router, get, post, put
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.params import FromPath, FromQuery
from litestar.types import ExceptionHandlersMap
from prometheus_client import CONTENT_TYPE_LATEST

from sage.unified.coordinator._errors import CoordinatorError, SettlingError
from sage.unified.coordinator._service import Coordinator
from sage.unified.coordinator._settings import CoordinatorSettings
from sage.unified.coordinator._store import Store
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import (
    AgentReport,
    AgentReportReply,
    EngineInfo,
    EngineStartRequest,
    EngineStopRequest,
    RegisterEngineRequest,
    decode,
    error_body,
)

__all__ = [
    "EXCEPTION_HANDLERS",
    "create_agents_router",
    "create_coordinator_app",
    "create_management_router",
]

log = logging.getLogger("sage.unified.coordinator")

T = TypeVar("T")

_HTTP_TYPES = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_token"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    422: ("invalid_request_error", "invalid_request"),
}


class _BadBody(CoordinatorError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_json"


class _InvalidBody(CoordinatorError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "invalid_request"


def _decode_body(body: bytes, type_: type[T]) -> T:
    try:
        return decode(body, type_)
    except msgspec.ValidationError as exc:
        # msgspec names the field as "at `$.spec.model`": surface it as ``param``.
        message = str(exc)
        param = message.rsplit("`$.", 1)[1].rstrip("`") if "`$." in message else None
        raise _InvalidBody(f"invalid request body: {message}", param=param) from None
    except msgspec.DecodeError as exc:
        raise _BadBody(f"malformed JSON body: {exc}") from None


def _coordinator_error(_: Request[Any, Any, Any], exc: CoordinatorError) -> Response[Any]:
    if exc.status_code >= 500 and exc.status_code != 503:
        log.warning("coordinator error %d: %s", exc.status_code, exc.message)
    headers = {"retry-after": "1"} if exc.status_code == 503 else None
    return Response(
        error_body(exc.message, exc.error_type, exc.code, exc.param),
        status_code=exc.status_code,
        headers=headers,
    )


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        status = 422
    error_type, code = _HTTP_TYPES.get(status, ("api_error", "error"))
    message = exc.detail
    if isinstance(exc, ValidationException) and exc.extra:
        message = f"{exc.detail}: {exc.extra}"
    return Response(
        error_body(str(message), error_type, code), status_code=status, headers=exc.headers
    )


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error in coordinator API", exc_info=exc)
    return Response(error_body("internal error", "api_error", "internal_error"), status_code=500)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    CoordinatorError: _coordinator_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
"""Exception handlers mapping the coordinator's errors to OpenAI-shaped bodies."""


def create_management_router(coordinator: Coordinator) -> Router:
    """``/v1/management/*``: backends (watch), engines, agents, GPUs. Admin token required."""

    async def admin(request: Request[Any, Any, Any], target: str = "") -> str:
        return await coordinator.authenticate(
            "admin", request.headers.get("authorization"), target=target
        )

    async def _decode_audited(
        request: Request[Any, Any, Any], type_: type[T], who: str, action: str
    ) -> T:
        # A control action refused for its body (unknown fields such as command/env,
        # a path or a flag as the model name) is as much an attempt as one refused
        # later, so it is audited too; only authenticated callers get this far.
        try:
            return _decode_body(await request.body(), type_)
        except CoordinatorError as exc:
            await coordinator.audit(who, action, "request body", f"rejected: {exc.message}")
            raise

    @get("/backends")
    async def backends(
        request: Request[Any, Any, Any],
        after: FromQuery[int | None] = None,
        wait: FromQuery[float] = 0.0,
    ) -> Response[bytes]:
        await admin(request, "backends")
        if coordinator.settling:
            raise SettlingError(
                "the coordinator restarted and is waiting for its agents to report again; "
                "keep using the last routing table and retry in a second"
            )
        if after is None or wait <= 0:
            table = coordinator.routing_table()
        else:
            timeout = min(wait, coordinator.settings.max_watch_s)
            table = await coordinator.wait_for_change(after, timeout)
        return Response(coordinator.routing_table_json(table), media_type="application/json")

    @get("/engines")
    async def list_engines(request: Request[Any, Any, Any]) -> dict[str, Any]:
        await admin(request, "engines")
        engines = coordinator.engines()
        return {"engines": engines, "count": len(engines)}

    @get("/engines/{engine_id:str}")
    async def get_engine(request: Request[Any, Any, Any], engine_id: FromPath[str]) -> EngineInfo:
        await admin(request, engine_id)
        return coordinator.engine(engine_id)

    @post("/engines/register", status_code=201)
    async def register(request: Request[Any, Any, Any]) -> EngineInfo:
        who = await admin(request, "engines/register")
        body = await _decode_audited(request, RegisterEngineRequest, who, "engine.register")
        return await coordinator.register_engine(body, who)

    @post("/engines/start", status_code=202)
    async def start(request: Request[Any, Any, Any]) -> EngineInfo:
        who = await admin(request, "engines/start")
        body = await _decode_audited(request, EngineStartRequest, who, "engine.start")
        return await coordinator.start_engine(body, who)

    @post("/engines/stop", status_code=200)
    async def stop(request: Request[Any, Any, Any]) -> EngineInfo:
        who = await admin(request, "engines/stop")
        body = await _decode_audited(request, EngineStopRequest, who, "engine.stop")
        return await coordinator.stop_engine(body, who)

    @get("/gpu")
    async def gpu(request: Request[Any, Any, Any]) -> dict[str, Any]:
        await admin(request, "gpu")
        return {"hosts": coordinator.gpu_hosts()}

    @get("/agents")
    async def agents(request: Request[Any, Any, Any]) -> dict[str, Any]:
        await admin(request, "agents")
        return {"agents": coordinator.agents()}

    @get("/audit")
    async def audit(request: Request[Any, Any, Any], limit: FromQuery[int] = 100) -> dict[str, Any]:
        await admin(request, "audit")
        entries = await coordinator.audit_log(max(1, min(limit, 1000)))
        return {"entries": [dataclasses.asdict(e) for e in entries]}

    return Router(
        path="/v1/management",
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
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )


def create_agents_router(coordinator: Coordinator) -> Router:
    """``PUT /v1/agents/{agent_id}``: agent snapshots (agent token required)."""

    @put("/{agent_id:str}", status_code=200)
    async def put_report(
        request: Request[Any, Any, Any], agent_id: FromPath[str]
    ) -> AgentReportReply:
        await coordinator.authenticate(
            "agent", request.headers.get("authorization"), target=agent_id
        )
        report = _decode_body(await request.body(), AgentReport)
        return await coordinator.report(agent_id, report)

    return Router(
        path="/v1/agents", route_handlers=[put_report], exception_handlers=EXCEPTION_HANDLERS
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

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz")
    async def readyz() -> Response[dict[str, Any]]:
        ready = coord.ready
        return Response(
            {"ready": ready, "revision": coord.revision}, status_code=200 if ready else 503
        )

    @get("/metrics")
    async def metrics() -> Response[bytes]:
        return Response(coord.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    app = Litestar(
        route_handlers=[
            health,
            readyz,
            metrics,
            create_management_router(coord),
            create_agents_router(coord),
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        # The API description is served at /schema/openapi.json (also exported to docs/openapi/).
        openapi_config=OpenAPIConfig(
            title="SAGE Unified Gateway coordinator", version="1", create_examples=False
        ),
    )
    app.state.coordinator = coord
    return app
