"""Routing core of the gateway's data plane: pure, synchronous, allocation-light.

- :class:`RoutingState` — routable backends per model/kind, with the gateway's own
  in-flight counters (kept across table updates).
- Policies (:func:`get_policy`): ``cache_aware`` (default; :class:`CacheAwarePolicy` over
  a :class:`PrefixIndex`), ``least_load``, ``round_robin``, ``session``.
- :class:`RoutingRequest` — what a policy may read of one request (its prompt chunks,
  computed only when asked) and the decision it annotates.
- :class:`RoutingLedger` — the cache-capture ledger: reuse available, captured and
  delivered per request (:func:`find_usage` finds the engine's usage in its answer).
- :class:`OutlierDetector` — passive ejection after consecutive failures.
- :class:`RetryBudget` — retries capped at a share of active requests; back-off.
- :func:`peek_request` — ``model``/``stream``/``user`` from a body without a full parse.

Per request the data plane does::

    peek = peek_request(body)                        # PeekError -> 400
    routing = RoutingRequest(peek.model, path, body, key)
    cands = state.candidates(peek.model, kind, now=now)
    b = policy.select(cands, session_key=key, rng=rng, request=routing)
    probe = state.acquire(b)
    try: ...send...; detector.record_success(b, now) / record_failure(b, now)
         routing.first_byte(ttft); routing.usage = find_usage(body)  # a stream: its last 3 chunks
    finally: state.release(b, probe)
    ledger.record(routing, b.key, status)

Errors (both ``ValueError``, so a caller that only checks input can catch that)::

    ValueError
    ├── PeekError             the body is not a JSON object, nests deeper than
    │                         MAX_JSON_DEPTH, or a routed field has the wrong type (400)
    └── UnknownPolicyError    get_policy() with a name nobody registered (config error)

Nothing here does I/O or imports a web framework, HTTP client or async library; time
is passed in as ``now`` (monotonic seconds).
"""

from __future__ import annotations

from sage.unified.gateway.routing._cache_aware import CacheAwarePolicy, KeyFunction
from sage.unified.gateway.routing._ejection import OutlierDetector
from sage.unified.gateway.routing._ledger import (
    SIGNALS,
    LedgerTotals,
    ModelHealth,
    RoutingLedger,
)
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
from sage.unified.gateway.routing._prefix_index import EngineSlot, PrefixIndex
from sage.unified.gateway.routing._request import (
    DEFAULT_CHUNK_BYTES,
    RoutingRequest,
    prompt_text,
)
from sage.unified.gateway.routing._retry_budget import RetryBudget, RetryThrottle
from sage.unified.gateway.routing._table import BackendState, RoutingState
from sage.unified.gateway.routing._usage import find_usage

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_POLICY",
    "MAX_JSON_DEPTH",
    "SIGNALS",
    "BackendState",
    "CacheAwarePolicy",
    "EngineSlot",
    "KeyFunction",
    "LeastLoadPolicy",
    "LedgerTotals",
    "ModelHealth",
    "OutlierDetector",
    "PeekError",
    "PrefixIndex",
    "RequestPeek",
    "RetryBudget",
    "RetryThrottle",
    "RoundRobinPolicy",
    "RoutingLedger",
    "RoutingPolicy",
    "RoutingRequest",
    "RoutingState",
    "SessionAffinityPolicy",
    "UnknownPolicyError",
    "find_usage",
    "get_policy",
    "peek_form",
    "peek_request",
    "policy_names",
    "prompt_text",
]
