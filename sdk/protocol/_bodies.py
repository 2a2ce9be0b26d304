"""Wire bodies of the protocol that are not domain models (lists, logs, statuses).

msgspec structs, tolerant of unknown fields like every wire model (see
:mod:`sage.unified.sdk.models`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sage.unified.sdk.models import AgentSummary, EngineInfo, GpuInfo

__all__ = [
    "AgentGpuList",
    "AgentList",
    "AuditLog",
    "AuditRecord",
    "CoordinatorReadiness",
    "EngineList",
    "EngineLogs",
    "GpuHostList",
    "HealthStatus",
    "HostGpus",
    "ModelCard",
    "ModelList",
    "OpenAIBody",
]

OpenAIBody = dict[str, Any]
"""An OpenAI request or answer, passed through as JSON (the engine defines it)."""


class EngineList(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Engines, from the control plane (every host, with ``count``) or one agent."""

    engines: list[EngineInfo]
    count: int | None = None


class AgentList(msgspec.Struct, kw_only=True):
    agents: list[AgentSummary]


class HostGpus(msgspec.Struct, kw_only=True):
    """The GPUs of one agent's host (``GET /v1/management/gpu``)."""

    agent_id: str
    host: str = ""
    gpus: list[GpuInfo] = msgspec.field(default_factory=list)
    gpu_error: str | None = None


class GpuHostList(msgspec.Struct, kw_only=True):
    hosts: list[HostGpus]


class AuditRecord(msgspec.Struct, kw_only=True):
    """One control action: who did what to which target, and how it ended."""

    at: float
    who: str
    action: str
    target: str
    result: str


class AuditLog(msgspec.Struct, kw_only=True):
    entries: list[AuditRecord]
    """Newest first."""


class AgentGpuList(msgspec.Struct, kw_only=True):
    gpus: list[GpuInfo]
    error: str | None = None
    """Why NVML could not be read, if it could not."""


class EngineLogs(msgspec.Struct, kw_only=True):
    engine_id: str
    lines: list[str]


class HealthStatus(msgspec.Struct, kw_only=True):
    status: str
    reason: str | None = None


class CoordinatorReadiness(msgspec.Struct, kw_only=True):
    ready: bool
    revision: int


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "sage"
    kinds: list[str] | None = None
    """What the model serves (``llm``, ``embedding``), so a client can tell chat models
    from embedding models (a SAGE extension; OpenAI clients ignore it)."""


class ModelList(msgspec.Struct, kw_only=True):
    """An OpenAI model list (``GET /v1/models``)."""

    data: list[ModelCard]
    object: str = "list"
