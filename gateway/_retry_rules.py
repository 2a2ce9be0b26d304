"""When the data plane tries another backend (pure: no I/O, no clock, no randomness).

A request is retried only before any byte of its answer reached the client, on a
*different* backend, at most ``retries`` times. What failed decides what limits apply:

- the request never reached an engine (connection refused, no pool slot), the engine
  dropped the connection before answering (it died) or hangs (stalled, then failed a
  liveness probe): a retry adds no load to a struggling engine, so only the retry
  throttle applies (a total outage stops retrying);
- the engine timed out, answered 502/503, or broke a non-streamed answer: the engine may
  be overloaded, so a retry also needs a slot of the retry budget (a share of the active
  requests), held until the request ends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FailureKind", "RetryPlan", "plan_retry"]


class FailureKind(enum.Enum):
    """How one attempt failed, before anything was relayed."""

    UNREACHED = "unreached"
    """Connection refused or no connection slot: the request never left the gateway."""
    DROPPED = "dropped"
    """The engine closed or reset the connection before its response head."""
    REFUSED = "refused"
    """The engine answered 502 or 503."""
    TIMED_OUT = "timed_out"
    """No response head (or no body byte) within the deadline."""
    BROKEN = "broken"
    """A non-streamed answer broke off, or the answer could not be parsed."""

    STALLED = "stalled"
    """No byte for the stall deadline, and the engine failed a liveness probe (hung)."""

    @property
    def adds_no_load(self) -> bool:
        """Retrying elsewhere cannot feed a storm: the request never reached an engine,
        or the engine that had it is gone (it dropped the connection or hangs)."""
        return self in (FailureKind.UNREACHED, FailureKind.DROPPED, FailureKind.STALLED)

    @property
    def nothing_answered(self) -> bool:
        """No engine produced an answer (503 when every attempt ended so), as opposed to
        an engine answering badly (502)."""
        return self is not FailureKind.REFUSED and self is not FailureKind.BROKEN


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """Whether to try another backend, and whether that needs a new budget slot."""

    retry: bool
    take_budget_slot: bool
    reason: str


def plan_retry(
    failure: FailureKind,
    *,
    attempts_left: int,
    holding_slot: bool,
    throttle_allows: bool,
    budget_has_room: bool,
) -> RetryPlan:
    """The decision after a failed attempt.

    Args:
        failure: how the attempt failed.
        attempts_left: attempts the request may still make.
        holding_slot: the request already holds a retry-budget slot.
        throttle_allows: the retry throttle is above half full.
        budget_has_room: a retry-budget slot is free.
    """
    if attempts_left <= 0:
        return RetryPlan(False, False, "no attempts left")
    if failure.adds_no_load:
        # Outside the budget: an engine killed under load fails all its requests at
        # once, and they must all move on (the budget's floor of 10 turned the rest
        # into client errors). The throttle still stops retries in a total outage.
        if throttle_allows:
            return RetryPlan(True, False, f"{failure.value}: retry on another backend")
        return RetryPlan(False, False, "retry throttle: most recent attempts failed")
    if holding_slot:
        return RetryPlan(True, False, "retry within the budget slot already held")
    if not throttle_allows:
        return RetryPlan(False, False, "retry throttle: most recent attempts failed")
    if not budget_has_room:
        return RetryPlan(False, False, "retry budget exhausted")
    return RetryPlan(True, True, "retry on another backend")
