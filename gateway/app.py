"""The gateway's Litestar app: OpenAI proxy, models, health, metrics, management routes.

The proxy endpoints are ``asgi`` route handlers over :class:`DataPlane` (the hot path);
everything else is ordinary Litestar handlers. :class:`GatewayRuntime` owns what lives
as long as the app (upstream pool, routing state, table source, the embedded
coordinator) and is entered by the app's lifespan.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
from litestar import Litestar, Request, Response, Router
from litestar.handlers import asgi
from litestar.params import FromPath

from sage.unified.coordinator import (
    Coordinator,
    CoordinatorSettings,
    create_agents_router,
    create_management_router,
)
from sage.unified.gateway._errors import (
    NoBackendAvailableError,
    UnauthorizedError,
    exception_handlers,
)
from sage.unified.gateway._metrics import GatewayMetrics
from sage.unified.gateway._proxy import DataPlane, ProxyConfig, Receive, Scope, Send
from sage.unified.gateway._refusals import model_not_found
from sage.unified.gateway._remote_plane import RemoteControlPlane
from sage.unified.gateway._routing_api import create_routing_router
from sage.unified.gateway._sources import EmbeddedSource, RemoteSource, StaticSource, TableSource
from sage.unified.gateway.routing import (
    OutlierDetector,
    RetryBudget,
    RoutingLedger,
    RoutingPolicy,
    RoutingState,
    get_policy,
)
from sage.unified.gateway.sessions import SessionChat, SqliteSessionStore, create_sessions_router
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.gateway.studio import create_studio_router
from sage.unified.gateway.upstream import UpstreamPool
from sage.unified.sdk.auth import TokenSet, bearer_token
from sage.unified.sdk.client import AsyncGatewayManagementClient, async_http_pool
from sage.unified.sdk.models import EngineKind, RoutingTable
from sage.unified.sdk.protocol import (
    ControlPlaneApi,
    Endpoint,
    GatewayApi,
    HealthStatus,
    ModelCard,
    ModelList,
)
from sage.unified.sdk.protocol.server import (
    allow_header_middleware,
    browser_guard,
    metrics_response,
    openapi_config,
    route,
)

__all__ = ["GatewayRuntime", "create_gateway_app", "fast_path"]

# ``None``: any kind of engine serves the endpoint.
_PROXIED: tuple[tuple[Endpoint[Any, Any], EngineKind | None], ...] = (
    (GatewayApi.CHAT, EngineKind.LLM),
    (GatewayApi.COMPLETIONS, EngineKind.LLM),
    (GatewayApi.EMBEDDINGS, EngineKind.EMBEDDING),
    # vLLM's other endpoints, by what serves them: generative models (vLLM's "generate"
    # runner, Whisper included) and pooling models (embedding, classification, scoring
    # and reranking models all run as vLLM's "pooling" runner, our "embedding" kind).
    # vLLM attaches its tokenizer routes whatever the model's tasks (entrypoints/serve:
    # register_vllm_serve_api_routers), so every kind of engine serves them.
    (GatewayApi.RESPONSES, EngineKind.LLM),
    (GatewayApi.TOKENIZE, None),
    (GatewayApi.DETOKENIZE, None),
    (GatewayApi.TRANSCRIPTIONS, EngineKind.LLM),
    (GatewayApi.POOLING, EngineKind.EMBEDDING),
    (GatewayApi.CLASSIFY, EngineKind.EMBEDDING),
    (GatewayApi.SCORE, EngineKind.EMBEDDING),
    (GatewayApi.SCORE_V1, EngineKind.EMBEDDING),
    (GatewayApi.RERANK, EngineKind.EMBEDDING),
    (GatewayApi.RERANK_V1, EngineKind.EMBEDDING),
    (GatewayApi.RERANK_V2, EngineKind.EMBEDDING),
)


def embedded_coordinator_settings(settings: GatewaySettings) -> CoordinatorSettings:
    """The settings of the coordinator a gateway embeds (its tokens, its SAGE_HOME, its
    store); what the gateway leaves unset comes from ``SAGE_COORDINATOR_*`` and TOML."""
    store: dict[str, Any] = {
        name: value
        for name, value in {
            "store": settings.store,
            "etcd_prefix": settings.etcd_prefix,
            "etcd_ca_file": settings.etcd_ca_file,
            "etcd_cert_file": settings.etcd_cert_file,
            "etcd_key_file": settings.etcd_key_file,
            "etcd_username": settings.etcd_username,
            "etcd_password": settings.etcd_password,
            "etcd_password_file": settings.etcd_password_file,
        }.items()
        if value is not None
    }
    local_agent_token = settings.local_agent_token()
    return CoordinatorSettings(
        admin_tokens=[t.get_secret_value() for t in settings.admin_tokens],
        # The configured agent tokens; without any, the token made for the local agent when
        # other credentials are set: agent reports must never be open while the rest is
        # locked (a report can put any engine under any model name into routing).
        agent_tokens=[t.get_secret_value() for t in settings.agent_tokens]
        or ([local_agent_token] if local_agent_token else []),
        agent_command_token=local_agent_token,
        host=settings.host,
        port=settings.port,
        insecure=settings.insecure,
        db_path=settings.sage_home / "coordinator" / "coordinator.db",
        **store,
    )


class GatewayRuntime:
    """Everything one gateway process runs besides the HTTP server.

    Args:
        settings: configuration.
        coordinator: the embedded coordinator to use (built from ``settings`` in
            embedded mode when omitted; ignored in remote and static modes).
        policy: the routing policy (built from ``settings`` when omitted; benchmarks
            pass variants, such as a cache-aware policy fed by engine KV events).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        coordinator: Coordinator | None = None,
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.state = RoutingState()
        self.policy = policy or get_policy(settings.routing_policy)(
            **settings.routing_policy_options()
        )
        self.ledger = RoutingLedger(self.policy, size=settings.routing_ledger_size)
        self.detector = OutlierDetector(
            self.state,
            consecutive_failures=settings.ejection_failures,
            base_ejection_s=settings.ejection_base_s,
            max_ejection_s=settings.ejection_max_s,
        )
        self.retry_budget = RetryBudget(
            budget_percent=settings.retry_budget_percent, backoff_base_s=settings.retry_backoff_s
        )
        self.coordinator: Coordinator | None = None
        # Calls to the control plane and to static backends share one pool.
        self.control_http: httpx.AsyncClient = async_http_pool()
        self.remote_plane: RemoteControlPlane | None = None
        source: TableSource
        if settings.mode == "embedded":
            self.coordinator = coordinator or Coordinator(embedded_coordinator_settings(settings))
            source = EmbeddedSource(self.coordinator)
        elif settings.mode == "remote":
            assert settings.coordinator_url is not None
            admin = settings.admin_tokens[0].get_secret_value() if settings.admin_tokens else None
            watcher = AsyncGatewayManagementClient(
                settings.coordinator_url, admin, http=self.control_http
            )
            source = RemoteSource(watcher)
            self.remote_plane = RemoteControlPlane(settings.coordinator_url, self.control_http)
        else:
            source = StaticSource(
                settings.backends, http=self.control_http, refresh_s=settings.static_refresh_s
            )
        self.source = source
        self.metrics = GatewayMetrics(self.state, source.status)
        self.metrics.watch_ledger(self.ledger)
        self.sessions: SqliteSessionStore | None = None
        if settings.sessions:
            self.sessions = SqliteSessionStore(settings.sessions_path(), settings.session_limits())
        self._data_plane: DataPlane | None = None
        self.started_at = time.time()
        self.local_agent_pending = False
        """Set by the server while the embedded local agent has not registered yet, so
        ``/readyz`` only turns 200 once an engine can be started."""
        self.ready_revision = 0
        """The coordinator's revision when the local agent registered: the routing state
        must have caught up with it before the gateway is ready."""

    @property
    def data_plane(self) -> DataPlane:
        if self._data_plane is None:
            raise RuntimeError("the gateway runtime is not started (app lifespan not entered)")
        return self._data_plane

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Start the coordinator (embedded), the upstream pool and the table source."""
        settings = self.settings
        async with AsyncExitStack() as stack:
            if self.coordinator is not None:
                await stack.enter_async_context(self.coordinator)
            if self.sessions is not None:
                await self.sessions.open()
                stack.push_async_callback(self.sessions.close)
            pool = UpstreamPool(
                max_connections_per_origin=settings.max_connections_per_backend,
                keepalive_expiry_s=settings.keepalive_expiry_s,
                connect_timeout_s=settings.connect_timeout_s,
                first_byte_timeout_s=settings.first_byte_timeout_s,
                read_idle_timeout_s=settings.read_idle_timeout_s,
            )
            stack.push_async_callback(pool.aclose)
            stack.push_async_callback(self.control_http.aclose)
            self._data_plane = DataPlane(
                state=self.state,
                policy=self.policy,
                detector=self.detector,
                retry_budget=self.retry_budget,
                upstream=pool,
                metrics=self.metrics,
                config=ProxyConfig(
                    api_keys=settings.api_key_set(),
                    engine_api_key=settings.engine_api_key.get_secret_value()
                    if settings.engine_api_key
                    else None,
                    max_body_bytes=settings.max_body_bytes,
                    max_header_bytes=settings.max_header_bytes,
                    max_headers=settings.max_headers,
                    retries=settings.retries,
                    expose_backend_header=settings.expose_backend_header,
                    stall_timeout_s=settings.stall_timeout_s,
                    stall_probe_timeout_s=settings.stall_probe_timeout_s,
                    continuation_models=frozenset(settings.continuation_models),
                    drain_handoff_s=settings.drain_handoff_s,
                    max_buffered_response_bytes=settings.max_buffered_response_bytes,
                ),
                unavailable_models=self.source.unavailable_models,
                settling=lambda: self.source.settling() or not self.is_ready(),
                sessions=SessionChat(self.sessions, keys_enabled=bool(settings.api_keys))
                if self.sessions is not None
                else None,
                ledger=self.ledger,
            )
            task_group = await stack.enter_async_context(anyio.create_task_group())
            task_group.start_soon(self.source.run, self.state)
            if self._data_plane.stalls is not None:
                task_group.start_soon(self._data_plane.stalls.run)
            stack.callback(task_group.cancel_scope.cancel)
            yield

    def is_ready(self) -> bool:
        """A routing table arrived (embedded: one at least as new as the moment the local
        agent registered, so its engines are in it). Until then unknown models are 503,
        never 404: they may simply not have been seen yet."""
        if self.source.status.get("last_update") is None:
            return False
        if self.coordinator is None:
            return True
        return (
            self.coordinator.ready
            and not self.local_agent_pending
            and self.state.revision >= self.ready_revision
        )

    def ready(self) -> tuple[bool, dict[str, Any]]:
        status = self.source.status
        has_table = self.is_ready()
        body: dict[str, Any] = {
            "mode": self.settings.mode,
            "control_plane_reachable": bool(status.get("reachable")),
            "backends": len(self.state),
            "models": self.state.models(),
            "revision": self.state.revision,
        }
        if status.get("error"):
            body["control_plane_error"] = status["error"]
        if self.coordinator is not None:
            store = self.coordinator.store_status
            body["store"] = store.kind
            if store.kind == "etcd":
                body["leader"] = self.coordinator.is_leader
            if not store.reachable:
                # Routing goes on with the last table; management writes answer 503.
                body["control_plane_reachable"] = False
                body["control_plane_error"] = store.error
        if self.local_agent_pending:
            body["local_agent"] = "starting"
        body["status"] = (
            "ready"
            if has_table and body["control_plane_reachable"]
            else ("degraded" if has_table else "starting")
        )
        return has_table, body


def _json_response(
    status: int, payload: bytes, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=payload, status_code=status, media_type="application/json", headers=headers
    )


def create_gateway_app(
    settings: GatewaySettings | None = None, *, runtime: GatewayRuntime | None = None
) -> Litestar:
    """Build the gateway app. Its lifespan starts ``runtime`` (built from ``settings``)."""
    if runtime is None:
        runtime = GatewayRuntime(settings or GatewaySettings())
    settings = runtime.settings
    api_keys = settings.api_key_set()

    def proxy_handler(endpoint: Endpoint[Any, Any], kind: EngineKind | None) -> Any:
        raw_path = endpoint.path.encode()

        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            await runtime.data_plane.handle(scope, receive, send, kind, raw_path)

        # copy_scope=False: the handler is the endpoint itself, not a mounted app that
        # could rewrite the scope; copying it would cost a dict copy per request.
        return asgi(endpoint.path, name=endpoint.name, copy_scope=False)(handler)

    handlers: list[Any] = [proxy_handler(endpoint, kind) for endpoint, kind in _PROXIED]
    handlers += _plain_handlers(runtime, api_keys)
    if runtime.sessions is not None:
        handlers.append(
            create_sessions_router(
                runtime.sessions, api_keys=api_keys, browser=settings.browser_policy()
            )
        )
    handlers += _control_handlers(runtime)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with runtime.run():
            yield

    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        exception_handlers=exception_handlers,
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        openapi_config=openapi_config("SAGE Unified Gateway"),
        middleware=[allow_header_middleware],
    )
    app.state.runtime = runtime
    return app


def _plain_handlers(runtime: GatewayRuntime, api_keys: TokenSet) -> list[Any]:
    """The gateway's own OpenAI routes (models) and its health, readiness and metrics."""

    def require_key(request: Request[Any, Any, Any]) -> None:
        if api_keys and not api_keys.verify(bearer_token(request.headers.get("authorization"))):
            raise UnauthorizedError(
                "missing or invalid API key; send it as 'Authorization: Bearer <key>'"
            )

    @route(GatewayApi.MODELS, sync_to_thread=False)
    def list_models(request: Request[Any, Any, Any]) -> ModelList:
        require_key(request)
        return ModelList(data=[_card(runtime, model) for model in runtime.state.models()])

    @route(GatewayApi.MODEL, sync_to_thread=False)
    def get_model(request: Request[Any, Any, Any], model: FromPath[str]) -> ModelCard:
        require_key(request)
        if model not in runtime.state.models():
            if runtime.source.settling() or not runtime.is_ready():
                # Before the first table (or while the control plane settles) a model may
                # simply not be seen yet: 503 to retry, never a permanent 404.
                raise NoBackendAvailableError(
                    f"model '{model}' is not known yet (the routing table is still filling); retry shortly",
                    headers={
                        "retry-after": str(runtime.data_plane.config.unavailable_retry_after_s)
                    },
                )
            raise model_not_found(model, runtime.state.models())
        return _card(runtime, model)

    @route(GatewayApi.HEALTH, sync_to_thread=False)
    def health() -> HealthStatus:
        return HealthStatus(status="ok")

    @route(GatewayApi.READYZ, sync_to_thread=False)
    def readyz() -> Response[dict[str, Any]]:
        ok, body = runtime.ready()
        return Response(content=body, status_code=200 if ok else 503)

    @route(GatewayApi.METRICS, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        text = runtime.metrics.render()
        if runtime.coordinator is not None:
            text += runtime.coordinator.metrics_text()
        return metrics_response(text)

    return [list_models, get_model, health, readyz, metrics]


def _control_handlers(runtime: GatewayRuntime) -> list[Any]:
    """Studio, and the management API of whichever control plane the gateway uses."""
    settings = runtime.settings
    browser = settings.browser_policy()
    handlers: list[Any] = [
        create_studio_router(refusal=settings.studio_refusal()),
        create_routing_router(
            runtime.ledger, admin_tokens=settings.admin_token_set(), browser=browser
        ),
    ]
    if runtime.coordinator is not None:
        handlers += [
            create_management_router(runtime.coordinator, browser),
            create_agents_router(runtime.coordinator, browser),
        ]
    elif runtime.remote_plane is not None:
        handlers.append(create_management_router(runtime.remote_plane, browser))
    else:
        handlers.append(_static_management(runtime))
    return handlers


def fast_path(
    app: Litestar, runtime: GatewayRuntime
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app the server runs: the proxy paths go straight to the data plane,
    everything else (and every other method on them, for the 405) to Litestar.

    The proxy routes are also Litestar ``asgi`` handlers, so ``app`` alone serves them
    (ASGI transports in tests). Skipping Litestar's router and exception middleware for
    them measured 63 -> 51 µs of gateway CPU per request at c=32 and 92 -> 83 µs at c=1
    (then under uvicorn; ``bench/gateway_overhead.sh``, docs/performance.md). One app, one
    port either way.
    """
    targets = {endpoint.path: (kind, endpoint.path.encode()) for endpoint, kind in _PROXIED}

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = targets.get(scope["path"])
            if target is not None:
                await runtime.data_plane.handle(scope, receive, send, *target)
                return
        await app(scope, receive, send)  # type: ignore[arg-type]

    return serve


def _card(runtime: GatewayRuntime, model: str) -> ModelCard:
    kinds = [kind.value for kind in runtime.state.kinds_of(model)]
    return ModelCard(id=model, created=int(runtime.started_at), kinds=kinds)


def _static_management(runtime: GatewayRuntime) -> Router:
    """Static mode has no control plane: only the backend table is served."""

    @route(ControlPlaneApi.BACKENDS, sync_to_thread=False)
    def backends() -> RoutingTable:
        source = runtime.source
        assert isinstance(source, StaticSource)
        return source.table(runtime.state.revision)

    return Router(
        path="/",
        route_handlers=[backends],
        guards=[browser_guard(runtime.settings.browser_policy())],
    )
