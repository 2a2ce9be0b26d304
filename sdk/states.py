"""The engine state machine shared by every component.

::

    STARTING ──healthy──▶ READY ──drain──▶ DRAINING ──stopped──▶ STOPPED
       │  ╲                 │  ╲               │
       │   ╲drain           │   ╲stopped       │
       ▼    ▼               ▼    ▼             ▼
     ERROR  DRAINING      ERROR  STOPPED     ERROR
       │
       ├──restart──▶ STARTING   (same engine id, next incarnation)
       └──stopped──▶ STOPPED

Only READY engines are routable. STOPPED is terminal. The agent owns the state of
its engines and applies :func:`transition`; the coordinator uses the same table to
reject impossible reports. This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ALLOWED_TRANSITIONS",
    "EngineEvent",
    "EngineState",
    "IllegalTransitionError",
    "Transition",
    "is_routable",
    "transition",
]


class EngineState(enum.StrEnum):
    """Where an engine is in its life."""

    STARTING = "STARTING"
    """Process launched (or restarting); not yet answering ``/health`` and ``/v1/models``."""
    READY = "READY"
    """Healthy and serving; the only routable state."""
    DRAINING = "DRAINING"
    """Out of routing; finishing in-flight requests before it is stopped."""
    STOPPED = "STOPPED"
    """Stopped on purpose. Terminal."""
    ERROR = "ERROR"
    """Failed (exited, unhealthy, never became ready); may be restarted."""


class EngineEvent(enum.StrEnum):
    """What happened to an engine; the input of :func:`transition`."""

    HEALTHY = "healthy"
    """Readiness checks passed (``/health`` 200 and the model listed)."""
    DRAIN = "drain"
    """An operator asked for a graceful stop."""
    STOPPED = "stopped"
    """The engine was stopped on purpose (after a drain, or at once)."""
    FAILED = "failed"
    """The process exited, probes failed, or start-up ran out of time."""
    RESTART = "restart"
    """The supervisor relaunches a failed engine (next incarnation)."""


_TABLE: dict[tuple[EngineState, EngineEvent], EngineState] = {
    (EngineState.STARTING, EngineEvent.HEALTHY): EngineState.READY,
    (EngineState.STARTING, EngineEvent.DRAIN): EngineState.DRAINING,
    (EngineState.STARTING, EngineEvent.STOPPED): EngineState.STOPPED,
    (EngineState.STARTING, EngineEvent.FAILED): EngineState.ERROR,
    (EngineState.READY, EngineEvent.DRAIN): EngineState.DRAINING,
    (EngineState.READY, EngineEvent.STOPPED): EngineState.STOPPED,
    (EngineState.READY, EngineEvent.FAILED): EngineState.ERROR,
    (EngineState.DRAINING, EngineEvent.STOPPED): EngineState.STOPPED,
    (EngineState.DRAINING, EngineEvent.FAILED): EngineState.ERROR,
    (EngineState.ERROR, EngineEvent.RESTART): EngineState.STARTING,
    (EngineState.ERROR, EngineEvent.STOPPED): EngineState.STOPPED,
}

ALLOWED_TRANSITIONS: frozenset[tuple[EngineState, EngineState]] = frozenset(
    (source, target) for (source, _), target in _TABLE.items()
)
"""Every ``(from, to)`` pair the machine can take; used to validate reports."""

_DEFAULT_REASONS: dict[EngineEvent, str] = {
    EngineEvent.HEALTHY: "health checks passed",
    EngineEvent.DRAIN: "drain requested",
    EngineEvent.STOPPED: "stopped",
    EngineEvent.FAILED: "failed",
    EngineEvent.RESTART: "restarting",
}


class IllegalTransitionError(ValueError):
    """Raised by :func:`transition` when ``event`` is not allowed in ``state``."""

    def __init__(self, state: EngineState, event: EngineEvent) -> None:
        super().__init__(f"event {event.value!r} is not allowed in state {state.value}")
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of :func:`transition`: the new state and why it was entered."""

    state: EngineState
    reason: str


def transition(state: EngineState, event: EngineEvent, reason: str | None = None) -> Transition:
    """Return the state an engine enters when ``event`` happens in ``state``.

    Args:
        state: the current state.
        event: what happened.
        reason: a human-readable cause recorded with the new state; a default
            description of the event when omitted.

    Raises:
        IllegalTransitionError: the event is not allowed in this state.
    """
    try:
        target = _TABLE[(state, event)]
    except KeyError:
        raise IllegalTransitionError(state, event) from None
    return Transition(target, reason if reason else _DEFAULT_REASONS[event])


def is_routable(state: EngineState) -> bool:
    """Only READY engines receive requests."""
    return state is EngineState.READY
