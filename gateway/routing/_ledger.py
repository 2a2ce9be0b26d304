"""The cache-capture ledger: per request and in aggregate, reuse available, captured and
delivered (pure; one per gateway process).

For every proxied request that reached an engine (or gave up), :meth:`RoutingLedger.record`
keeps, in tokens:

* **available**: the longest prefix of the prompt cached on any candidate engine, as
  the routing index knows it (cache-aware policies only; ``None`` otherwise);
* **captured**: the prefix cached on the engine the policy chose, as the index knows it;
* **delivered**: what the engine itself reported,
  ``usage.prompt_tokens_details.cached_tokens`` (``None`` when its answer carried no
  usage: a stream whose client did not ask for ``stream_options.include_usage``);

and the reason of the pick. Index units (bytes of prompt text) become tokens through the
engine's own ``prompt_tokens`` for that request (or the policy's estimate without usage).

A stream the gateway continued on another engine after its engine broke (see
``gateway/_continuation.py``) adds one decision per continuation
(:meth:`RoutingLedger.record_continuation`): the engine that continued it, the one it
took over from (``continued_from``) and reason ``continuation``.

Recent decisions sit in a bounded ring (the management API's
``/v1/management/routing/decisions``); cumulative sums per model and engine feed the
Prometheus counters; :meth:`RoutingLedger.health` compares the three figures over the
last ``window`` decisions of a model and names what looks wrong (see ``SIGNALS``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sage.unified.gateway.routing._policies import RoutingPolicy
from sage.unified.gateway.routing._request import RoutingRequest
from sage.unified.sdk.protocol import RoutingDecision

__all__ = ["CONTINUATION", "SIGNALS", "LedgerTotals", "ModelHealth", "RoutingLedger"]

CONTINUATION = "continuation"
"""The reason of a decision that continued a broken stream on another engine."""

SIGNALS: dict[str, str] = {
    "capture_low": "the policy captured under half of the reuse the index saw available "
    "(load decided most picks, or the policy is not cache-aware for this traffic)",
    "delivery_low": "engines delivered under half of the reuse the pick captured "
    "(an engine stopped reporting cached_tokens, or the index thinks engines hold more "
    "than they do: lower cache_aware_engine_cache_tokens)",
    "index_cold": "engines delivered over twice the reuse the index saw available "
    "(the index is cold after a restart, or other gateways routed these prefixes)",
    "usage_missing": "under half of the answers carried usage (clients did not ask for "
    "stream_options.include_usage, or engines do not report it)",
}
"""The health signals :meth:`RoutingLedger.health` may raise, with what they mean."""

_MIN_SAMPLES = 20
_MIN_TOKENS = 1024


@dataclass(slots=True)
class LedgerTotals:
    """Cumulative figures of one (model, engine) since the gateway started.

    ``prompt_tokens`` and ``delivered_tokens`` sum only the requests whose answer carried
    usage (``usage_reported`` of them), so ``delivered / prompt`` is a hit rate.
    """

    requests: int = 0
    usage_reported: int = 0
    prompt_tokens: int = 0
    available_tokens: int = 0
    captured_tokens: int = 0
    delivered_tokens: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ModelHealth:
    """One model's figures over its recent decisions, and the signals they raise."""

    decisions: int = 0
    indexed: int = 0
    """Decisions whose policy reported availability (cache-aware ones)."""
    usage_reported: int = 0
    prompt_tokens: int = 0
    available_tokens: int = 0
    captured_tokens: int = 0
    captured_reported: int = 0
    """Captured tokens of the decisions whose answer carried usage."""
    delivered_tokens: int = 0
    signals: list[str] = field(default_factory=list)

    @property
    def capture_ratio(self) -> float | None:
        """captured / available."""
        return self.captured_tokens / self.available_tokens if self.available_tokens else None

    @property
    def delivery_ratio(self) -> float | None:
        """delivered / captured, over the answers that carried usage."""
        if not self.captured_reported:
            return None
        return self.delivered_tokens / self.captured_reported

    @property
    def hit_rate(self) -> float | None:
        """delivered / prompt tokens."""
        return self.delivered_tokens / self.prompt_tokens if self.prompt_tokens else None


# One decision: at, request_id, model, engine_id, reason, attempts, status,
# prompt_tokens, available_tokens, captured_tokens, delivered_tokens, ttft_s,
# continued_from.
Entry = tuple[
    float,
    bytes,
    str,
    str,
    str,
    int,
    int,
    int | None,
    int | None,
    int | None,
    int | None,
    float | None,
    str | None,
]


class RoutingLedger:
    """Records routing outcomes (module docstring).

    Args:
        policy: the gateway's policy (its name is recorded; it hears of each outcome).
        size: recent decisions kept.
        window: recent decisions per model that :meth:`health` judges.
        clock: wall-clock seconds (``time.time``).
    """

    def __init__(
        self,
        policy: RoutingPolicy,
        *,
        size: int = 2048,
        window: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if size < 1 or window < 1:
            raise ValueError("size and window must be >= 1")
        self.policy = policy
        self.policy_name = policy.name
        self.window = window
        self._clock = clock
        self._recent: deque[Entry] = deque(maxlen=size)
        self._totals: dict[tuple[str, str], LedgerTotals] = {}

    def record(self, request: RoutingRequest, engine_id: str, status: int) -> None:
        """``request`` ended with ``status`` on ``engine_id`` (the last engine tried).

        The relay sets ``request.ttft_s`` and ``request.usage`` before; the policy is
        told (:meth:`RoutingPolicy.finished`) after.
        """
        usage = request.usage
        prompt_tokens = delivered = None
        if usage is not None:
            prompt_tokens, delivered = usage
        available = captured = None
        if request.available_units is not None:
            available = request.tokens_of(request.available_units)
            captured = request.tokens_of(request.captured_units or 0)
        reason = request.reason or self.policy.default_reason(request)
        self._recent.append(
            (
                self._clock(),
                request.request_id,
                request.model,
                engine_id,
                reason,
                request.attempts,
                status,
                prompt_tokens,
                available,
                captured,
                delivered,
                request.ttft_s,
                None,
            )
        )
        key = (request.model, engine_id)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = LedgerTotals()
        totals.requests += 1
        totals.reasons[reason] = totals.reasons.get(reason, 0) + 1
        if available is not None:
            totals.available_tokens += available
            totals.captured_tokens += captured or 0
        if usage is not None:
            totals.usage_reported += 1
            totals.prompt_tokens += usage[0]
            totals.delivered_tokens += usage[1]
        self.policy.finished(request)

    def record_continuation(
        self, request: RoutingRequest, engine_id: str, continued_from: str, status: int
    ) -> None:
        """``engine_id`` continued the stream of ``request`` that ``continued_from`` broke,
        and ended with ``status`` (its own outcome: 502 if it broke too).

        One pick, with no usage or cache figures (the continuation's prompt is the
        original plus the partial answer); :meth:`health` leaves it out. The policy is
        not told: it held nothing for the pick.
        """
        self._recent.append(
            (
                self._clock(),
                request.request_id,
                request.model,
                engine_id,
                CONTINUATION,
                1,
                status,
                None,
                None,
                None,
                None,
                None,
                continued_from,
            )
        )
        totals = self._totals.setdefault((request.model, engine_id), LedgerTotals())
        totals.requests += 1
        totals.reasons[CONTINUATION] = totals.reasons.get(CONTINUATION, 0) + 1

    def decision_header(self, request: RoutingRequest, engine_id: str) -> bytes:
        """The value of ``X-Sage-Route-Decision`` for a pick (before the answer is known):
        ``engine=ID; reason=R; policy=P[; available_tokens=N; captured_tokens=M]``."""
        reason = request.reason or self.policy.default_reason(request)
        parts = [f"engine={engine_id}", f"reason={reason}", f"policy={self.policy_name}"]
        if request.available_units is not None:
            parts.append(f"available_tokens={request.tokens_of(request.available_units)}")
            parts.append(f"captured_tokens={request.tokens_of(request.captured_units or 0)}")
        return "; ".join(parts).encode()

    # -- reads (management API, metrics) ------------------------------------------

    def decisions(
        self, *, model: str | None = None, engine: str | None = None, limit: int = 100
    ) -> list[RoutingDecision]:
        """Recent decisions, newest first, filtered by model and engine id."""
        out: list[RoutingDecision] = []
        for entry in reversed(self._recent):
            if len(out) >= limit:
                break
            if (model is not None and entry[2] != model) or (
                engine is not None and entry[3] != engine
            ):
                continue
            out.append(
                RoutingDecision(
                    at=entry[0],
                    request_id=entry[1].decode("latin-1"),
                    model=entry[2],
                    engine_id=entry[3],
                    policy=self.policy_name,
                    reason=entry[4],
                    attempts=entry[5],
                    retried=entry[5] > 1,
                    status=entry[6],
                    prompt_tokens=entry[7],
                    available_tokens=entry[8],
                    captured_tokens=entry[9],
                    delivered_tokens=entry[10],
                    ttft_s=entry[11],
                    continued_from=entry[12],
                )
            )
        return out

    def totals(self) -> Iterator[tuple[str, str, LedgerTotals]]:
        """``(model, engine_id, totals)`` of every pair seen since start."""
        for (model, engine), totals in self._totals.items():
            yield model, engine, totals

    def health(self) -> dict[str, ModelHealth]:
        """Per model, the last ``window`` decisions summed and judged (``SIGNALS``)."""
        by_model: dict[str, ModelHealth] = {}
        for entry in reversed(self._recent):
            health = by_model.get(entry[2])
            if health is None:
                health = by_model[entry[2]] = ModelHealth()
            if health.decisions >= self.window or entry[12] is not None:
                continue
            health.decisions += 1
            if entry[8] is not None:
                health.indexed += 1
                health.available_tokens += entry[8]
                health.captured_tokens += entry[9] or 0
            if entry[7] is not None:
                health.usage_reported += 1
                health.prompt_tokens += entry[7]
                health.delivered_tokens += entry[10] or 0
                health.captured_reported += entry[9] or 0
        for health in by_model.values():
            health.signals = _signals(health)
        return by_model


def _signals(h: ModelHealth) -> list[str]:
    if h.decisions < _MIN_SAMPLES:
        return []
    signals: list[str] = []
    if h.available_tokens >= _MIN_TOKENS and h.captured_tokens < 0.5 * h.available_tokens:
        signals.append("capture_low")
    if h.captured_reported >= _MIN_TOKENS and h.delivered_tokens < 0.5 * h.captured_reported:
        signals.append("delivery_low")
    if (
        h.indexed >= h.decisions / 2
        and h.delivered_tokens >= _MIN_TOKENS
        and h.available_tokens * 2 < h.delivered_tokens
    ):
        signals.append("index_cold")
    if h.usage_reported < h.decisions / 2:
        signals.append("usage_missing")
    return signals
