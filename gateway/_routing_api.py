"""``/v1/management/routing/*``: the gateway's cache-capture ledger over HTTP.

Every gateway answers from its own ledger, whatever its mode (embedded, remote, static):
the decisions are per gateway process, like its metrics. Admin scope: when admin tokens
are configured the request must carry one; with none (loopback only, which the settings
enforce) the routes are open, like the rest of the management API.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router
from litestar.params import FromQuery

from sage.unified.gateway._errors import UnauthorizedError
from sage.unified.gateway.routing import (
    SIGNALS,
    CacheAwarePolicy,
    LedgerTotals,
    ModelHealth,
    RoutingLedger,
)
from sage.unified.sdk.auth import TokenSet, bearer_token
from sage.unified.sdk.protocol import (
    BrowserPolicy,
    ModelRouting,
    RoutingApi,
    RoutingCounts,
    RoutingDecisions,
    RoutingStats,
)
from sage.unified.sdk.protocol.server import browser_guard, route

__all__ = ["create_routing_router", "routing_stats"]

_MAX_LIMIT = 10_000


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _counts(totals: LedgerTotals) -> RoutingCounts:
    return RoutingCounts(
        requests=totals.requests,
        usage_reported=totals.usage_reported,
        prompt_tokens=totals.prompt_tokens,
        available_tokens=totals.available_tokens,
        captured_tokens=totals.captured_tokens,
        delivered_tokens=totals.delivered_tokens,
        hit_rate=_ratio(totals.delivered_tokens, totals.prompt_tokens),
        capture_ratio=_ratio(totals.captured_tokens, totals.available_tokens),
        delivery_ratio=_ratio(totals.delivered_tokens, totals.captured_tokens),
        reasons=dict(totals.reasons),
    )


def _recent(health: ModelHealth) -> RoutingCounts:
    return RoutingCounts(
        requests=health.decisions,
        usage_reported=health.usage_reported,
        prompt_tokens=health.prompt_tokens,
        available_tokens=health.available_tokens,
        captured_tokens=health.captured_tokens,
        delivered_tokens=health.delivered_tokens,
        hit_rate=health.hit_rate,
        capture_ratio=health.capture_ratio,
        delivery_ratio=health.delivery_ratio,
    )


def _add(into: LedgerTotals, totals: LedgerTotals) -> None:
    into.requests += totals.requests
    into.usage_reported += totals.usage_reported
    into.prompt_tokens += totals.prompt_tokens
    into.available_tokens += totals.available_tokens
    into.captured_tokens += totals.captured_tokens
    into.delivered_tokens += totals.delivered_tokens
    for reason, count in totals.reasons.items():
        into.reasons[reason] = into.reasons.get(reason, 0) + count


def routing_stats(ledger: RoutingLedger) -> RoutingStats:
    """The ledger in aggregate: per model, per engine, recently, and its health signals."""
    models: dict[str, tuple[LedgerTotals, dict[str, RoutingCounts]]] = {}
    for model, engine, totals in ledger.totals():
        entry = models.get(model)
        if entry is None:
            entry = models[model] = (LedgerTotals(), {})
        _add(entry[0], totals)
        entry[1][engine] = _counts(totals)
    health = ledger.health()
    out: list[ModelRouting] = []
    for model in sorted(models):
        model_total, engines = models[model]
        recent = health.get(model, ModelHealth())
        out.append(
            ModelRouting(
                model=model,
                total=_counts(model_total),
                engines=dict(sorted(engines.items())),
                recent=_recent(recent),
                signals=list(recent.signals),
            )
        )
    policy = ledger.policy
    index = policy.index if isinstance(policy, CacheAwarePolicy) else None
    return RoutingStats(
        policy=ledger.policy_name,
        window=ledger.window,
        models=out,
        index_engines=index.engines if index is not None else None,
        index_keys=len(index) if index is not None else None,
        signal_help=dict(SIGNALS),
    )


def create_routing_router(
    ledger: RoutingLedger, *, admin_tokens: TokenSet, browser: BrowserPolicy
) -> Router:
    """The two ledger routes, answered from ``ledger`` (refusing foreign hosts, like every
    management route: see :mod:`sage.unified.sdk.protocol._browser`)."""

    def authorize(request: Request[Any, Any, Any]) -> None:
        if admin_tokens and not admin_tokens.verify(
            bearer_token(request.headers.get("authorization"))
        ):
            raise UnauthorizedError(
                "missing or invalid admin token; send 'Authorization: Bearer <admin token>'"
            )

    @route(RoutingApi.DECISIONS, sync_to_thread=False)
    def decisions(
        request: Request[Any, Any, Any],
        model: FromQuery[str | None] = None,
        engine: FromQuery[str | None] = None,
        limit: FromQuery[int] = 100,
    ) -> RoutingDecisions:
        authorize(request)
        limit = max(1, min(limit, _MAX_LIMIT))
        return RoutingDecisions(decisions=ledger.decisions(model=model, engine=engine, limit=limit))

    @route(RoutingApi.STATS, sync_to_thread=False)
    def stats(request: Request[Any, Any, Any]) -> RoutingStats:
        authorize(request)
        return routing_stats(ledger)

    return Router(path="/", route_handlers=[decisions, stats], guards=[browser_guard(browser)])
