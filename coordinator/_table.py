"""What the registry hands out: the routing table of a revision and the outcomes of its
commands (pure).

:func:`build_table` turns :class:`TableInputs` (gathered cheaply on the event loop) into
the :class:`~sage.unified.sdk.models.RoutingTable` (thousands of rows, built off the loop
by the publisher).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sage.unified.sdk.models import Backend, EngineInfo, RoutingTable

__all__ = ["AgentRecord", "ExpireOutcome", "ReportOutcome", "TableInputs", "build_table"]


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """What survives a coordinator restart about an agent (persisted by the store)."""

    agent_id: str
    url: str
    host: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class TableInputs:
    """A revision and its routable engines (see :meth:`Registry.table_inputs`)."""

    revision: int
    engines: list[EngineInfo]
    generated_at: float
    unavailable_models: list[str] = field(default_factory=list)
    """Models with engines (not STOPPED) but none routable: the gateway answers 503."""


def build_table(inputs: TableInputs) -> RoutingTable:
    """The routing table for ``inputs``: one row per engine, sorted by (model, id).

    Pure and thread-safe given that engine objects are only ever re-pointed, never
    half-updated (the registry swaps ``load`` objects whole).
    """
    backends = [
        Backend(
            id=e.id,
            model=e.model,
            kind=e.kind,
            url=e.url,
            state=e.state,
            load=e.load,
            incarnation=e.incarnation,
            agent_id=e.agent_id,
        )
        for e in inputs.engines
    ]
    backends.sort(key=lambda b: (b.model, b.id))
    return RoutingTable(
        revision=inputs.revision,
        backends=backends,
        generated_at=inputs.generated_at,
        unavailable_models=inputs.unavailable_models,
    )


@dataclass(slots=True)
class ReportOutcome:
    """Result of :meth:`Registry.apply_report`."""

    changed: bool
    """The revision went up (watchers must be woken)."""
    revision: int
    agent_changed: bool
    """The agent is new, or its url, host or incarnation changed (persist it)."""
    engine_ids: list[str]
    """Ids of the engines in the accepted snapshot."""
    notes: list[str] = field(default_factory=list)
    """Loosely-validated oddities (state moves outside the machine), for logs."""


@dataclass(slots=True)
class ExpireOutcome:
    """Result of :meth:`Registry.expire`."""

    changed: bool
    revision: int
    lost_agents: list[str] = field(default_factory=list)
    deleted_engines: list[str] = field(default_factory=list)
