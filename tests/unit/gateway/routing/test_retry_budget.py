from __future__ import annotations

import random

import pytest

from sage.unified.gateway.routing import RetryBudget, RetryThrottle


def test_minimum_concurrency_with_few_requests() -> None:
    budget = RetryBudget(min_retry_concurrency=3)
    assert [budget.try_acquire(1) for _ in range(4)] == [True, True, True, False]
    assert budget.active_retries == 3
    budget.release()
    assert budget.try_acquire(1) is True


def test_default_floor_lets_a_dead_engines_requests_all_move_on() -> None:
    budget = RetryBudget()
    assert sum(budget.try_acquire(12) for _ in range(12)) == 10


def test_throttle_stops_retries_when_most_attempts_fail() -> None:
    throttle = RetryThrottle(max_tokens=10, token_ratio=0.5)
    assert throttle.allows_retry()
    for _ in range(4):
        throttle.record_failure()
    assert throttle.allows_retry()  # 6 tokens left: a burst of failures still retries
    throttle.record_failure()
    assert not throttle.allows_retry()  # 5 of 10: half empty, stop
    for _ in range(100):
        throttle.record_failure()
    assert throttle.tokens == 0
    for _ in range(11):
        throttle.record_success()
    assert throttle.allows_retry()  # successes refill it
    for _ in range(100):
        throttle.record_success()
    assert throttle.tokens == 10


def test_throttle_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        RetryThrottle(max_tokens=0)


def test_percent_of_active_requests() -> None:
    budget = RetryBudget(budget_percent=20, min_retry_concurrency=3)
    assert budget.limit(0) == 3
    assert budget.limit(10) == 3
    assert budget.limit(20) == 4
    assert budget.limit(100) == 20
    assert budget.limit(104) == 20
    granted = sum(budget.try_acquire(100) for _ in range(50))
    assert granted == 20
    # Load dropped: no new retry until enough of the old ones finished.
    assert budget.try_acquire(10) is False
    for _ in range(17):
        budget.release()
    assert budget.active_retries == 3
    assert budget.try_acquire(10) is False
    budget.release()
    assert budget.try_acquire(10) is True


def test_release_never_goes_negative() -> None:
    budget = RetryBudget()
    budget.release()
    assert budget.active_retries == 0


def test_backoff_is_jittered_around_50ms() -> None:
    budget = RetryBudget()
    rng = random.Random(0)
    values = [budget.backoff_s(rng) for _ in range(2000)]
    assert min(values) >= 0.025
    assert max(values) <= 0.075
    assert 0.045 < sum(values) / len(values) < 0.055
    assert len(set(values)) > 1000


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        RetryBudget(budget_percent=-1)
    with pytest.raises(ValueError, match="backoff_jitter"):
        RetryBudget(backoff_jitter=2)
