from __future__ import annotations

import pytest

from sage.unified.agent.restart_policy import RestartPolicy


def test_backoff_doubles_and_caps() -> None:
    policy = RestartPolicy(initial_s=2, max_s=60, max_restarts=100, window_s=600)
    now = 0.0
    delays = []
    for _ in range(8):
        delay = policy.next_delay(now)
        assert delay is not None
        delays.append(delay)
        now += delay
        policy.record_restart(now)
        now += 1
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]


def test_cap_within_window_then_recovers_after_window() -> None:
    policy = RestartPolicy(initial_s=2, max_s=60, max_restarts=5, window_s=600)
    for t in (0.0, 10.0, 20.0, 30.0, 40.0):
        assert policy.next_delay(t) is not None
        policy.record_restart(t)
    assert policy.restarts_in_window(50.0) == 5
    assert policy.next_delay(50.0) is None
    assert policy.next_delay(599.0) is None
    # The first restart (t=0) leaves the window at t=600.
    assert policy.next_delay(600.0) is not None


def test_zero_max_restarts_never_restarts() -> None:
    assert RestartPolicy(max_restarts=0).next_delay(0.0) is None


def test_healthy_long_enough_resets_backoff() -> None:
    policy = RestartPolicy(initial_s=2, max_s=60, max_restarts=100)
    for t in (0.0, 1.0, 2.0):
        policy.record_restart(t)
    assert policy.next_delay(3.0) == 16
    policy.record_healthy(10.0)
    # Not healthy long enough (reset after 2 x max_s = 120 s).
    assert policy.next_delay(100.0) == 16
    assert policy.next_delay(130.0) == 2
    policy.record_healthy(131.0)
    assert policy.consecutive == 0
    policy.record_restart(131.0)
    assert policy.next_delay(132.0) == 4


def test_restart_clears_healthy_mark() -> None:
    policy = RestartPolicy(initial_s=1, max_s=8, max_restarts=100)
    policy.record_restart(0.0)
    policy.record_healthy(1.0)
    policy.record_restart(2.0)  # failed again before the reset period
    assert policy.next_delay(100.0) == 4


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        RestartPolicy(initial_s=10, max_s=5)
    with pytest.raises(ValueError, match="window_s"):
        RestartPolicy(window_s=0)
