"""SAGE Unified Gateway SDK: wire models, the engine state machine, typed clients."""

from __future__ import annotations

from sage.unified.sdk.fleet import (
    Deployment,
    DeploymentCondition,
    DeploymentList,
    DeploymentPlan,
    DeploymentPlanEntry,
    DeploymentPlanRequest,
    DeploymentSpec,
    DeploymentStatus,
    HostDrain,
    Placement,
    PlannedAction,
    ReplicaStatus,
    RolloutState,
    RolloutStatus,
    RolloutUndoRequest,
    UpdateStrategy,
)
from sage.unified.sdk.models import (
    AgentReport,
    AgentReportReply,
    AgentSummary,
    Backend,
    EngineInfo,
    EngineKind,
    EngineLoad,
    EngineSpec,
    EngineStartRequest,
    EngineStopRequest,
    ErrorBody,
    ErrorDetail,
    GpuInfo,
    GpuProcess,
    HostMetrics,
    RegisterEngineRequest,
    RoutingTable,
    Runtime,
    SimulatorOptions,
)
from sage.unified.sdk.states import EngineEvent, EngineState, IllegalTransitionError, transition

__all__ = [
    "APIStatusError",
    "AgentClient",
    "AgentReport",
    "AgentReportReply",
    "AgentSummary",
    "AsyncAgentClient",
    "AsyncChatStream",
    "AsyncGatewayManagementClient",
    "AsyncUnifiedInferenceClient",
    "Backend",
    "ChatResult",
    "ChatStream",
    "CompletionResult",
    "Deployment",
    "DeploymentCondition",
    "DeploymentList",
    "DeploymentPlan",
    "DeploymentPlanEntry",
    "DeploymentPlanRequest",
    "DeploymentSpec",
    "DeploymentStatus",
    "EmbeddingResult",
    "EngineEvent",
    "EngineInfo",
    "EngineKind",
    "EngineLoad",
    "EngineSpec",
    "EngineStartRequest",
    "EngineState",
    "EngineStopRequest",
    "ErrorBody",
    "ErrorDetail",
    "GatewayManagementClient",
    "GatewayUnreachableError",
    "GpuInfo",
    "GpuProcess",
    "HostDrain",
    "HostMetrics",
    "IllegalTransitionError",
    "ModelNotSpecifiedError",
    "NoBackendAvailableError",
    "Placement",
    "PlannedAction",
    "RegisterEngineRequest",
    "ReplicaStatus",
    "RolloutState",
    "RolloutStatus",
    "RolloutUndoRequest",
    "RoutingTable",
    "Runtime",
    "SageClientError",
    "SimulatorOptions",
    "StreamInterruptedError",
    "UnifiedInferenceClient",
    "UpdateStrategy",
    "Usage",
    "__version__",
    "transition",
]


_CLIENT_NAMES = frozenset(
    {
        "APIStatusError",
        "AgentClient",
        "AsyncAgentClient",
        "AsyncChatStream",
        "AsyncGatewayManagementClient",
        "AsyncUnifiedInferenceClient",
        "ChatResult",
        "ChatStream",
        "CompletionResult",
        "EmbeddingResult",
        "GatewayManagementClient",
        "GatewayUnreachableError",
        "ModelNotSpecifiedError",
        "NoBackendAvailableError",
        "SageClientError",
        "StreamInterruptedError",
        "UnifiedInferenceClient",
        "Usage",
    }
)


def __getattr__(name: str) -> object:
    # The clients load httpx; agents and the coordinator import this package for the
    # wire models alone, so the client names resolve on first use.
    if name == "__version__":
        from importlib.metadata import version

        return version("sage-unified-gateway")
    if name in _CLIENT_NAMES:
        from sage.unified.sdk import client

        return getattr(client, name)
    raise AttributeError(name)
