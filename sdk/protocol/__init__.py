"""The protocol between components: every endpoint declared once.

An :class:`Endpoint` names its method, path template, request and reply types, the
credential it needs (:class:`Scope`) and whether a client may retry it (:class:`Retry`).
Servers register their routes from these declarations
(:mod:`sage.unified.sdk.protocol.server`, for Litestar), and the SDK's clients
(:mod:`sage.unified.sdk.client`) are the only code that sends them.
"""

from __future__ import annotations

from sage.unified.sdk.protocol._bodies import (
    AgentGpuList,
    AgentList,
    AuditLog,
    AuditRecord,
    CoordinatorReadiness,
    EngineList,
    EngineLogs,
    GpuHostList,
    HealthStatus,
    HostGpus,
    ModelCard,
    ModelList,
    ModelRouting,
    OpenAIBody,
    RoutingCounts,
    RoutingDecision,
    RoutingDecisions,
    RoutingStats,
)
from sage.unified.sdk.protocol._browser import BrowserPolicy, Refusal, browser_refusal
from sage.unified.sdk.protocol._catalog import (
    ENDPOINTS,
    AgentApi,
    ControlPlaneApi,
    EngineApi,
    GatewayApi,
    RoutingApi,
    SessionsApi,
    StudioApi,
    endpoints_of,
)
from sage.unified.sdk.protocol._endpoint import Component, Endpoint, Retry, Scope

__all__ = [
    "ENDPOINTS",
    "AgentApi",
    "AgentGpuList",
    "AgentList",
    "AuditLog",
    "AuditRecord",
    "BrowserPolicy",
    "Component",
    "ControlPlaneApi",
    "CoordinatorReadiness",
    "Endpoint",
    "EngineApi",
    "EngineList",
    "EngineLogs",
    "GatewayApi",
    "GpuHostList",
    "HealthStatus",
    "HostGpus",
    "ModelCard",
    "ModelList",
    "ModelRouting",
    "OpenAIBody",
    "Refusal",
    "Retry",
    "RoutingApi",
    "RoutingCounts",
    "RoutingDecision",
    "RoutingDecisions",
    "RoutingStats",
    "Scope",
    "SessionsApi",
    "StudioApi",
    "browser_refusal",
    "endpoints_of",
]
