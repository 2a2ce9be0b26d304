"""The cache-capture ledger: decisions, sums, the decision header and its health signals."""

from __future__ import annotations

import itertools

import pytest

from sage.unified.gateway.routing import (
    CacheAwarePolicy,
    LeastLoadPolicy,
    RoutingLedger,
    RoutingPolicy,
    RoutingRequest,
    SessionAffinityPolicy,
)

CHAT = b"/v1/chat/completions"


def request(
    model: str = "m",
    *,
    usage: tuple[int, int] | None = (1000, 800),
    available: int | None = None,
    captured: int | None = None,
    prompt_units: int = 4000,
    reason: str | None = None,
    attempts: int = 1,
    session: str | None = None,
) -> RoutingRequest:
    r = RoutingRequest(model, CHAT, b"{}", session, request_id=b"req-1")
    r.usage = usage
    r.attempts = attempts
    r.reason = reason
    r.prompt_units = prompt_units
    r.available_units = available
    r.captured_units = captured
    r.units_per_token = 4.0
    r.ttft_s = 0.05
    return r


def ledger(policy: RoutingPolicy | None = None, **kw: object) -> RoutingLedger:
    clock = itertools.count(1000.0)
    return RoutingLedger(policy or CacheAwarePolicy(), clock=lambda: float(next(clock)), **kw)  # type: ignore[arg-type]


def test_a_decision_has_the_shape_the_console_renders() -> None:
    book = ledger()
    # 4,000 bytes of prompt are 1,000 tokens: index units scale by the engine's count.
    book.record(request(available=3200, captured=2400, reason="load", attempts=2), "e1", 200)
    (decision,) = book.decisions()
    assert decision.at == 1000.0
    assert (decision.request_id, decision.model, decision.engine_id) == ("req-1", "m", "e1")
    assert (decision.policy, decision.reason, decision.status) == ("cache_aware", "load", 200)
    assert (decision.attempts, decision.retried) == (2, True)
    assert decision.prompt_tokens == 1000
    assert (decision.available_tokens, decision.captured_tokens) == (800, 600)
    assert decision.delivered_tokens == 800
    assert decision.ttft_s == 0.05


def test_decisions_newest_first_filtered_and_bounded() -> None:
    book = ledger(size=5)
    for i in range(8):
        book.record(request(model=f"m{i % 2}"), f"e{i % 3}", 200)
    assert [d.at for d in book.decisions()] == [1007.0, 1006.0, 1005.0, 1004.0, 1003.0]
    assert {d.model for d in book.decisions(model="m1")} == {"m1"}
    assert [d.engine_id for d in book.decisions(engine="e1", limit=1)] == ["e1"]
    assert book.decisions(model="nope") == []


def test_totals_count_usage_only_where_engines_reported_it() -> None:
    book = ledger(LeastLoadPolicy())
    book.record(request(), "e1", 200)
    book.record(request(usage=None), "e1", 200)  # a stream without include_usage
    book.record(request(usage=(500, 0)), "e1", 499)
    ((model, engine, totals),) = list(book.totals())
    assert (model, engine) == ("m", "e1")
    assert (totals.requests, totals.usage_reported) == (3, 2)
    assert (totals.prompt_tokens, totals.delivered_tokens) == (1500, 800)
    assert totals.available_tokens == 0  # least_load knows nothing of prefixes
    assert totals.reasons == {"load": 3}
    (decision, *_) = book.decisions()
    assert decision.available_tokens is None


def test_other_policies_name_their_reason() -> None:
    assert ledger(SessionAffinityPolicy()).decision_header(request(session="s"), "e2") == (
        b"engine=e2; reason=affinity; policy=session"
    )
    header = ledger().decision_header(request(available=400, captured=400, reason="prefix"), "e1")
    assert header == (
        b"engine=e1; reason=prefix; policy=cache_aware; available_tokens=100; captured_tokens=100"
    )


def test_recording_tells_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[bool] = []
    r = request()
    r.hold(lambda: released.append(True))
    ledger().record(r, "e1", 200)
    assert released == [True]


def test_a_continuation_is_its_own_decision_and_no_health_sample() -> None:
    book = ledger()
    for _ in range(30):
        r = request(available=3200, captured=3200)
        # A continuation carries no usage: counted as a health sample it would raise
        # usage_missing on a healthy fleet.
        book.record_continuation(r, "e2", "e1", 200)
        book.record(r, "e1", 200)
    assert health(book) == []
    assert book.health()["m"].decisions == 30
    continued, original = book.decisions(limit=2)[::-1]
    assert (continued.engine_id, continued.reason, continued.continued_from) == (
        "e2",
        "continuation",
        "e1",
    )
    assert (continued.attempts, continued.retried, continued.delivered_tokens) == (1, False, None)
    assert (original.engine_id, original.continued_from) == ("e1", None)
    totals = {engine: t for _, engine, t in book.totals()}
    assert (totals["e2"].requests, totals["e2"].reasons) == (30, {"continuation": 30})


def health(book: RoutingLedger) -> list[str]:
    return book.health()["m"].signals


def test_signals_of_a_healthy_fleet_and_of_low_capture() -> None:
    good = ledger()
    for _ in range(30):
        good.record(request(available=3200, captured=3200), "e1", 200)
    assert health(good) == []
    assert good.health()["m"].capture_ratio == 1.0
    low = ledger()
    for _ in range(30):
        low.record(request(available=3200, captured=400), "e1", 200)
    assert health(low) == ["capture_low"]


def test_signal_when_engines_deliver_less_than_captured() -> None:
    # An engine stopped reporting cached_tokens (started without the flag), or the index
    # believes engines hold what they evicted.
    book = ledger()
    for _ in range(30):
        book.record(request(available=3200, captured=3200, usage=(1000, 0)), "e1", 200)
    assert health(book) == ["delivery_low"]


def test_signal_when_the_index_is_cold() -> None:
    # After a restart the engines still hit their caches, but the index knows nothing.
    book = ledger()
    for _ in range(30):
        book.record(request(available=0, captured=0, usage=(1000, 900)), "e1", 200)
    assert health(book) == ["index_cold"]


def test_signal_when_answers_carry_no_usage() -> None:
    book = ledger(LeastLoadPolicy())
    for _ in range(30):
        book.record(request(usage=None), "e1", 200)
    assert health(book) == ["usage_missing"]


def test_few_decisions_raise_nothing_and_the_window_is_per_model() -> None:
    book = ledger(window=10)
    for _ in range(5):
        book.record(request(usage=None), "e1", 200)
    assert health(book) == []
    for _ in range(50):
        book.record(request(model="other", usage=None), "e1", 200)
    assert book.health()["other"].decisions == 10
    assert book.health()["m"].decisions == 5
