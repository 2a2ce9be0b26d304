"""Routing core of the gateway's data plane: pure, synchronous, allocation-light.

- :class:`RoutingState` — routable backends per model/kind, with the gateway's own
  in-flight counters (kept across table updates).
- Policies (:func:`get_policy`): ``least_load`` (default), ``round_robin``, ``session``.
- :class:`OutlierDetector` — passive ejection after consecutive failures.
- :class:`RetryBudget` — retries capped at a share of active requests; back-off.
- :func:`peek_request` — ``model``/``stream``/``user`` from a body without a full parse.

Per request the data plane does::

    peek = peek_request(body)                        # PeekError -> 400
    cands = state.candidates(peek.model, kind, now=now)
    b = policy.select(cands, session_key=key, rng=rng)
    probe = state.acquire(b)
    try: ...send...; detector.record_success(b, now) / record_failure(b, now)
    finally: state.release(b, probe)

Errors (both ``ValueError``, so a caller that only checks input can catch that)::

    ValueError
    ├── PeekError             the body is not a JSON object, nests deeper than
    │                         MAX_JSON_DEPTH, or a routed field has the wrong type (400)
    └── UnknownPolicyError    get_policy() with a name nobody registered (config error)

Nothing here does I/O or imports a web framework, HTTP client or async library; time
is passed in as ``now`` (monotonic seconds).
"""

from __future__ import annotations

from sage.unified.gateway.routing._ejection import OutlierDetector
from sage.unified.gateway.routing._peek import (
    MAX_JSON_DEPTH,
    PeekError,
    RequestPeek,
    peek_form,
    peek_request,
)
from sage.unified.gateway.routing._policies import (
    DEFAULT_POLICY,
    LeastLoadPolicy,
    RoundRobinPolicy,
    RoutingPolicy,
    SessionAffinityPolicy,
    UnknownPolicyError,
    get_policy,
    policy_names,
)
from sage.unified.gateway.routing._retry_budget import RetryBudget, RetryThrottle
from sage.unified.gateway.routing._table import BackendState, RoutingState

__all__ = [
    "DEFAULT_POLICY",
    "MAX_JSON_DEPTH",
    "BackendState",
    "LeastLoadPolicy",
    "OutlierDetector",
    "PeekError",
    "RequestPeek",
    "RetryBudget",
    "RetryThrottle",
    "RoundRobinPolicy",
    "RoutingPolicy",
    "RoutingState",
    "SessionAffinityPolicy",
    "UnknownPolicyError",
    "get_policy",
    "peek_form",
    "peek_request",
    "policy_names",
]
