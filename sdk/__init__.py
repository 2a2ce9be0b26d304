"""SAGE Unified Gateway SDK: wire models, the engine state machine, typed clients."""

from __future__ import annotations

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
    "AgentReport",
    "AgentReportReply",
    "AgentSummary",
    "Backend",
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
    "GpuInfo",
    "GpuProcess",
    "HostMetrics",
    "IllegalTransitionError",
    "RegisterEngineRequest",
    "RoutingTable",
    "Runtime",
    "SimulatorOptions",
    "__version__",
    "transition",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("sage-unified-gateway")
    raise AttributeError(name)
