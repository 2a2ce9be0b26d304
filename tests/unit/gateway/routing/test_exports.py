from __future__ import annotations

import subprocess
import sys

import sage.unified.gateway.routing as routing


def test_public_names() -> None:
    assert sorted(routing.__all__) == sorted(
        [
            "DEFAULT_CHUNK_BYTES",
            "DEFAULT_POLICY",
            "SIGNALS",
            "BackendState",
            "CacheAwarePolicy",
            "EngineSlot",
            "KeyFunction",
            "LedgerTotals",
            "ModelHealth",
            "PrefixIndex",
            "RoutingLedger",
            "RoutingRequest",
            "find_usage",
            "prompt_text",
            "LeastLoadPolicy",
            "MAX_JSON_DEPTH",
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
    )
    for name in routing.__all__:
        assert getattr(routing, name) is not None


def test_routing_is_pure() -> None:
    # The routing core must not pull in a web framework, HTTP client or async library,
    # even indirectly: import it alone in a fresh interpreter and look.
    code = (
        "import sys, sage.unified.gateway.routing\n"
        "print(' '.join(m for m in ('litestar', 'httpx', 'anyio', 'asyncio', 'socket')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
