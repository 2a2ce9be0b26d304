"""Every endpoint between components (and of the public APIs), declared once.

The table in docs/architecture.md ("The protocol") is generated from :data:`ENDPOINTS`
and a test checks that each server serves exactly the endpoints declared for it.
"""

from __future__ import annotations

from typing import Any

from sage.unified.sdk.models import (
    AgentReport,
    AgentReportReply,
    EngineInfo,
    EngineSpec,
    EngineStartRequest,
    EngineStopRequest,
    GpuInfo,
    RegisterEngineRequest,
    RoutingTable,
)
from sage.unified.sdk.protocol._bodies import (
    AgentGpuList,
    AgentList,
    AuditLog,
    CoordinatorReadiness,
    EngineList,
    EngineLogs,
    GpuHostList,
    HealthStatus,
    ModelCard,
    ModelList,
    OpenAIBody,
)
from sage.unified.sdk.protocol._catalog_console import RoutingApi, SessionsApi, StudioApi
from sage.unified.sdk.protocol._catalog_fleet import FleetApi
from sage.unified.sdk.protocol._endpoint import Component, Endpoint, Retry, Scope, declarer

__all__ = [
    "ENDPOINTS",
    "AgentApi",
    "ControlPlaneApi",
    "EngineApi",
    "GatewayApi",
    "RoutingApi",
    "SessionsApi",
    "StudioApi",
    "endpoints_of",
]

_MGMT = "/v1/management"
_PROXY_ERRORS = (404, 502, 503, 508)
"""What a proxied OpenAI route can answer beyond its shape: unknown model (404), an
engine that failed (502), none available (503), a forwarding loop (508). A wrong-kind
model is a 400. Engines' own 4xx pass through unchanged."""
_ANY = dict[str, Any]


_cp = declarer(Component.CONTROL_PLANE, "control_plane", Scope.ADMIN)
_agent = declarer(Component.AGENT, "agent", Scope.AGENT)
_gw = declarer(Component.GATEWAY, "gateway", Scope.INFERENCE)
_engine = declarer(Component.ENGINE, "engine", Scope.PUBLIC)


class ControlPlaneApi(FleetApi):
    """The coordinator: agents' reports and the management API (``/v1/management``).

    The fleet's endpoints (deployments, rollouts, cordon and drain, GPU clear) are
    declared in :class:`~._catalog_fleet.FleetApi` and inherited here.
    """

    REPORT: Endpoint[AgentReport, AgentReportReply] = _cp(
        "report",
        "PUT",
        "/v1/agents/{agent_id}",
        AgentReport,
        AgentReportReply,
        scope=Scope.AGENT,
        summary="An agent's full snapshot; renews its lease (idempotent).",
    )
    BACKENDS: Endpoint[None, RoutingTable] = _cp(
        "backends",
        "GET",
        f"{_MGMT}/backends",
        None,
        RoutingTable,
        query=("after", "wait"),
        summary="The routing table; with after/wait, a long-poll until the revision passes after.",
    )
    ENGINES: Endpoint[None, EngineList] = _cp(
        "engines", "GET", f"{_MGMT}/engines", None, EngineList, summary="Every engine, every state."
    )
    ENGINE: Endpoint[None, EngineInfo] = _cp(
        "engine", "GET", f"{_MGMT}/engines/{{engine_id}}", None, EngineInfo, summary="One engine."
    )
    REGISTER_ENGINE: Endpoint[RegisterEngineRequest, EngineInfo] = _cp(
        "register_engine",
        "POST",
        f"{_MGMT}/engines/register",
        RegisterEngineRequest,
        EngineInfo,
        status=201,
        retry=Retry.UNSENT_ONLY,
        summary="Add an engine no agent manages.",
    )
    START_ENGINE: Endpoint[EngineStartRequest, EngineInfo] = _cp(
        "start_engine",
        "POST",
        f"{_MGMT}/engines/start",
        EngineStartRequest,
        EngineInfo,
        status=202,
        retry=Retry.UNSENT_ONLY,
        summary="Place an engine and ask its agent to start it.",
    )
    STOP_ENGINE: Endpoint[EngineStopRequest, EngineInfo] = _cp(
        "stop_engine",
        "POST",
        f"{_MGMT}/engines/stop",
        EngineStopRequest,
        EngineInfo,
        summary="Drain or stop an engine; unregister an engine no agent manages.",
    )
    GPUS: Endpoint[None, GpuHostList] = _cp(
        "gpus", "GET", f"{_MGMT}/gpu", None, GpuHostList, summary="The GPUs of every agent's host."
    )
    AGENTS: Endpoint[None, AgentList] = _cp(
        "agents",
        "GET",
        f"{_MGMT}/agents",
        None,
        AgentList,
        summary="Known agents and their leases.",
    )
    AUDIT: Endpoint[None, AuditLog] = _cp(
        "audit",
        "GET",
        f"{_MGMT}/audit",
        None,
        AuditLog,
        query=("limit",),
        summary="Control actions, newest first.",
    )
    HEALTH: Endpoint[None, HealthStatus] = _cp(
        "health",
        "GET",
        "/health",
        None,
        HealthStatus,
        scope=Scope.PUBLIC,
        summary="Liveness of a standalone coordinator.",
    )
    READYZ: Endpoint[None, CoordinatorReadiness] = _cp(
        "readyz",
        "GET",
        "/readyz",
        None,
        CoordinatorReadiness,
        scope=Scope.PUBLIC,
        summary="200 once the store is open and the loops run, else 503.",
    )
    METRICS: Endpoint[None, None] = _cp(
        "metrics",
        "GET",
        "/metrics",
        None,
        None,
        scope=Scope.PUBLIC,
        summary="Prometheus text (sage_coordinator_*).",
        reply_media="text/plain",
    )


class AgentApi:
    """One host's agent."""

    HEALTHZ: Endpoint[None, HealthStatus] = _agent(
        "healthz",
        "GET",
        "/healthz",
        None,
        HealthStatus,
        scope=Scope.PUBLIC,
        summary="Liveness: the agent's event loop ticks.",
    )
    READYZ: Endpoint[None, HealthStatus] = _agent(
        "readyz",
        "GET",
        "/readyz",
        None,
        HealthStatus,
        scope=Scope.PUBLIC,
        summary="200 once reconciled and the control plane is reachable, else 503.",
    )
    ENGINES: Endpoint[None, EngineList] = _agent(
        "engines", "GET", "/v1/engines", None, EngineList, summary="This host's engines."
    )
    START_ENGINE: Endpoint[EngineSpec, EngineInfo] = _agent(
        "start_engine",
        "POST",
        "/v1/engines",
        EngineSpec,
        EngineInfo,
        status=201,
        retry=Retry.UNSENT_ONLY,
        query=("engine_id",),
        summary="Launch an engine from a typed spec (STARTING); with engine_id, a repeat "
        "returns the engine already started.",
    )
    ENGINE: Endpoint[None, EngineInfo] = _agent(
        "engine", "GET", "/v1/engines/{engine_id}", None, EngineInfo, summary="One engine."
    )
    DRAIN_ENGINE: Endpoint[None, EngineInfo] = _agent(
        "drain_engine",
        "POST",
        "/v1/engines/{engine_id}/drain",
        None,
        EngineInfo,
        query=("wait", "timeout_s"),
        summary="Drain: 200 once STOPPED (wait=true), or 202 at once (wait=false).",
    )
    STOP_ENGINE: Endpoint[None, EngineInfo] = _agent(
        "stop_engine",
        "DELETE",
        "/v1/engines/{engine_id}",
        None,
        EngineInfo,
        summary="Stop now: SIGTERM, SIGKILL after the grace (STOPPED).",
    )
    ENGINE_LOGS: Endpoint[None, EngineLogs] = _agent(
        "engine_logs",
        "GET",
        "/v1/engines/{engine_id}/logs",
        None,
        EngineLogs,
        query=("tail",),
        summary="The last lines of an engine's log.",
    )
    GPUS: Endpoint[None, AgentGpuList] = _agent(
        "gpus", "GET", "/v1/gpus", None, AgentGpuList, summary="This host's GPUs (NVML)."
    )
    CLEAR_GPU: Endpoint[None, GpuInfo] = _agent(
        "clear_gpu",
        "POST",
        "/v1/gpus/{index}/clear",
        None,
        GpuInfo,
        summary="Lift a GPU's fault quarantine (after an operator checked it); idempotent.",
    )
    METRICS: Endpoint[None, None] = _agent(
        "metrics",
        "GET",
        "/metrics",
        None,
        None,
        # Like every read of the agent, open on a loopback bind and behind the agent
        # token on a network one (GPU and engine details of the host).
        scope=Scope.AGENT,
        summary="Prometheus text (sage_agent_*).",
        reply_media="text/plain",
    )


class GatewayApi:
    """The gateway's own routes (the OpenAI API and the process endpoints)."""

    CHAT: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "chat",
        "POST",
        "/v1/chat/completions",
        _ANY,
        _ANY,
        summary="OpenAI chat, routed by model.",
        errors=_PROXY_ERRORS,
        streams=True,
    )
    COMPLETIONS: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "completions",
        "POST",
        "/v1/completions",
        _ANY,
        _ANY,
        summary="OpenAI completions, routed by model.",
        errors=_PROXY_ERRORS,
        streams=True,
    )
    EMBEDDINGS: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "embeddings",
        "POST",
        "/v1/embeddings",
        _ANY,
        _ANY,
        summary="OpenAI embeddings, routed by model.",
        errors=_PROXY_ERRORS,
    )
    MODELS: Endpoint[None, ModelList] = _gw(
        "models", "GET", "/v1/models", None, ModelList, summary="Models with a routable engine."
    )
    MODEL: Endpoint[None, ModelCard] = _gw(
        "model",
        "GET",
        "/v1/models/{model}",
        None,
        ModelCard,
        summary="One served model (503 with Retry-After before the first routing table).",
        errors=(404, 503),
    )
    RESPONSES: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "responses",
        "POST",
        "/v1/responses",
        _ANY,
        _ANY,
        summary="OpenAI Responses API (stateless pass-through), routed by model.",
        errors=_PROXY_ERRORS,
        streams=True,
    )
    TOKENIZE: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "tokenize",
        "POST",
        "/tokenize",
        _ANY,
        _ANY,
        summary="vLLM's tokenizer, by model.",
        errors=_PROXY_ERRORS,
    )
    DETOKENIZE: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "detokenize",
        "POST",
        "/detokenize",
        _ANY,
        _ANY,
        summary="vLLM's detokenizer, by model.",
        errors=_PROXY_ERRORS,
    )
    TRANSCRIPTIONS: Endpoint[None, OpenAIBody] = _gw(
        "transcriptions",
        "POST",
        "/v1/audio/transcriptions",
        None,
        _ANY,
        request_media="multipart/form-data",
        summary="Speech to text (multipart/form-data with model and file), by model.",
        errors=_PROXY_ERRORS,
    )
    POOLING: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "pooling",
        "POST",
        "/pooling",
        _ANY,
        _ANY,
        summary="vLLM's pooling, by model.",
        errors=_PROXY_ERRORS,
    )
    CLASSIFY: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "classify",
        "POST",
        "/classify",
        _ANY,
        _ANY,
        summary="Classification, by model.",
        errors=_PROXY_ERRORS,
    )
    SCORE: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "score",
        "POST",
        "/score",
        _ANY,
        _ANY,
        summary="Sentence-pair scores, by model.",
        errors=_PROXY_ERRORS,
    )
    SCORE_V1: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "score_v1",
        "POST",
        "/v1/score",
        _ANY,
        _ANY,
        summary="Sentence-pair scores, by model.",
        errors=_PROXY_ERRORS,
    )
    RERANK: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "rerank",
        "POST",
        "/rerank",
        _ANY,
        _ANY,
        summary="Rerank documents, by model.",
        errors=_PROXY_ERRORS,
    )
    RERANK_V1: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "rerank_v1",
        "POST",
        "/v1/rerank",
        _ANY,
        _ANY,
        summary="Rerank documents, by model.",
        errors=_PROXY_ERRORS,
    )
    RERANK_V2: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "rerank_v2",
        "POST",
        "/v2/rerank",
        _ANY,
        _ANY,
        summary="Rerank documents, by model.",
        errors=_PROXY_ERRORS,
    )
    HEALTH: Endpoint[None, HealthStatus] = _gw(
        "health", "GET", "/health", None, HealthStatus, scope=Scope.PUBLIC, summary="Liveness."
    )
    READYZ: Endpoint[None, _ANY] = _gw(
        "readyz",
        "GET",
        "/readyz",
        None,
        _ANY,
        scope=Scope.PUBLIC,
        summary="200 once a routing table is known (and the local agent registered), else 503.",
    )
    METRICS: Endpoint[None, None] = _gw(
        "metrics",
        "GET",
        "/metrics",
        None,
        None,
        scope=Scope.PUBLIC,
        summary="Prometheus text (sage_gateway_*, and sage_coordinator_* when embedded).",
        reply_media="text/plain",
    )


class EngineApi:
    """What the agent, the control plane and a static gateway read from an engine (vLLM's API)."""

    HEALTH: Endpoint[None, None] = _engine(
        "health", "GET", "/health", None, None, summary="200 once the model is loaded."
    )
    MODELS: Endpoint[None, ModelList] = _engine(
        "models", "GET", "/v1/models", None, ModelList, summary="Served models."
    )
    METRICS: Endpoint[None, None] = _engine(
        "metrics", "GET", "/metrics", None, None, summary="vllm:* Prometheus text."
    )


def _declared(namespace: type) -> list[Endpoint[Any, Any]]:
    found: dict[str, Endpoint[Any, Any]] = {}
    for klass in namespace.__mro__:
        for attr, value in vars(klass).items():
            if isinstance(value, Endpoint):
                found.setdefault(attr, value)
    return list(found.values())


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = tuple(
    endpoint
    for namespace in (
        GatewayApi,
        SessionsApi,
        RoutingApi,
        StudioApi,
        ControlPlaneApi,
        AgentApi,
        EngineApi,
    )
    for endpoint in _declared(namespace)
)
"""Every declared endpoint."""


def endpoints_of(server: Component) -> tuple[Endpoint[Any, Any], ...]:
    """The endpoints one component serves."""
    return tuple(e for e in ENDPOINTS if e.server is server)
