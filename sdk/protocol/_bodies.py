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
    "ModelRouting",
    "OpenAIBody",
    "RoutingCounts",
    "RoutingDecision",
    "RoutingDecisions",
    "RoutingStats",
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


class RoutingDecision(msgspec.Struct, kw_only=True):
    """One routed request in the gateway's cache-capture ledger (tokens; ``None``: unknown).

    ``available_tokens``: the longest prefix cached on any candidate engine, as the
    routing index knew it (cache-aware policies only); ``captured_tokens``: the prefix
    cached on the chosen engine, as the index knew it; ``delivered_tokens``: what the
    engine reported (``usage.prompt_tokens_details.cached_tokens``).
    """

    at: float
    """Wall-clock seconds (epoch) when the request ended."""
    request_id: str
    model: str
    engine_id: str
    """The engine that answered (the last one tried; ``none`` if none was)."""
    policy: str
    reason: str
    """``prefix``, ``load``, ``affinity``, ``fallback``, ``round_robin``, or
    ``continuation`` (this engine continued a stream another engine broke)."""
    attempts: int
    retried: bool
    status: int
    prompt_tokens: int | None = None
    available_tokens: int | None = None
    captured_tokens: int | None = None
    delivered_tokens: int | None = None
    ttft_s: float | None = None
    continued_from: str | None = None
    """Set on a continuation: the engine whose broken stream this engine continued (the
    request's first decision names it; ``None`` on every other decision)."""


class RoutingDecisions(msgspec.Struct, kw_only=True):
    """``GET /v1/management/routing/decisions``: newest first."""

    decisions: list[RoutingDecision]


class RoutingCounts(msgspec.Struct, kw_only=True):
    """Summed ledger figures (of one engine, a model, or a model's recent decisions).

    ``prompt_tokens`` and ``delivered_tokens`` count only the answers that carried usage
    (``usage_reported``), so ``hit_rate`` is delivered / prompt; ``capture_ratio`` is
    captured / available and ``delivery_ratio`` delivered / captured.
    """

    requests: int = 0
    usage_reported: int = 0
    prompt_tokens: int = 0
    available_tokens: int = 0
    captured_tokens: int = 0
    delivered_tokens: int = 0
    hit_rate: float | None = None
    capture_ratio: float | None = None
    delivery_ratio: float | None = None
    reasons: dict[str, int] = msgspec.field(default_factory=dict)


class ModelRouting(msgspec.Struct, kw_only=True):
    """One model's routing since the gateway started, per engine, and recently."""

    model: str
    total: RoutingCounts
    engines: dict[str, RoutingCounts]
    recent: RoutingCounts
    """The model's last ``window`` decisions."""
    signals: list[str] = msgspec.field(default_factory=list)
    """Health signals of the recent decisions (``RoutingStats.signal_help`` explains them)."""


class RoutingStats(msgspec.Struct, kw_only=True):
    """``GET /v1/management/routing/stats``: the gateway's ledger in aggregate."""

    policy: str
    window: int
    models: list[ModelRouting]
    index_engines: int | None = None
    """Engines in the cache-aware policy's prefix index (``None``: another policy)."""
    index_keys: int | None = None
    signal_help: dict[str, str] = msgspec.field(default_factory=dict)
