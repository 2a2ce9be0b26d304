"""The rules that fail a READY engine and choose its stop grace, run on a timeline."""

from __future__ import annotations

import pytest

from sage.unified.agent.liveness import (
    HealthRule,
    HealthStreak,
    failure_reason,
    has_failed,
    next_round_in,
    round_budget,
    stop_grace,
)

DEFAULTS = HealthRule()  # interval 2 s, timeout 3 s, 3 failures


def run_rounds(
    rule: HealthRule, *, hang_at: float, answer_s: float = 0.01, fails_fast: bool = False
) -> tuple[float, float, str]:
    """Rounds from READY at t = 0 against an engine that answers in ``answer_s`` until
    ``hang_at`` and then never again (or, with ``fails_fast``, answers 503 at once).
    Returns (ERROR time, last successful check, reason)."""
    now = last_ok = 0.0
    failures = 0
    for _ in range(100):
        started = now
        budget = round_budget(rule, since_ok_s=started - last_ok)
        answered = started + answer_s < hang_at
        now = started + answer_s if answered or fails_fast else started + budget
        if answered:
            failures, last_ok = 0, now
        else:
            failures += 1
            if has_failed(rule, failures=failures, since_ok_s=now - last_ok):
                detail = "503" if fails_fast else "timed out"
                reason = failure_reason(
                    rule, failures=failures, since_ok_s=now - last_ok, detail=detail
                )
                return now, last_ok, reason
        now += next_round_in(rule, round_took_s=now - started)
    raise AssertionError("never failed")


@pytest.mark.parametrize("hang_at", [0.5, 1.99, 2.005, 2.02, 3.0, 3.99, 4.02, 7.3, 100.0])
def test_a_hung_engine_fails_within_6_s_of_its_last_answer(hang_at: float) -> None:
    error_at, last_ok, reason = run_rounds(DEFAULTS, hang_at=hang_at)
    assert DEFAULTS.window_s == 6.0
    assert error_at - last_ok <= 6.0 + 1e-9
    assert error_at - hang_at <= 6.0 + 1e-9
    assert reason.startswith("health check failed 2 times in 6.0 s: timed out")


def test_an_engine_answering_errors_fails_after_three_checks() -> None:
    error_at, last_ok, reason = run_rounds(DEFAULTS, hang_at=3.0, fails_fast=True)
    assert reason == "health check failed 3 times: 503"
    assert error_at - last_ok == pytest.approx(6.0)


def test_a_round_never_gets_less_than_one_second_nor_more_than_the_timeout() -> None:
    assert round_budget(DEFAULTS, since_ok_s=0.0) == 3.0
    assert round_budget(DEFAULTS, since_ok_s=4.0) == 2.0
    assert round_budget(DEFAULTS, since_ok_s=5.5) == 1.0
    assert round_budget(DEFAULTS, since_ok_s=60.0) == 1.0
    assert next_round_in(DEFAULTS, round_took_s=0.1) == pytest.approx(1.9)
    assert next_round_in(DEFAULTS, round_took_s=3.0) == 0.0


def test_a_streak_fails_a_hung_engine_after_two_checks_in_the_window() -> None:
    streak = HealthStreak(DEFAULTS, last_ok=0.0)
    assert streak.round_budget(0.0) == 3.0
    assert streak.failed(3.0, detail="timed out", process_status=None) is None
    assert streak.failed(6.0, detail="timed out", process_status=None) == (
        "health check failed 2 times in 6.0 s: timed out"
    )


def test_a_passed_check_starts_the_streak_again() -> None:
    streak = HealthStreak(DEFAULTS, last_ok=0.0)
    assert streak.failed(1.0, detail="503", process_status=None) is None
    assert streak.failed(2.0, detail="503", process_status=None) is None
    streak.passed(3.0)
    assert streak.round_budget(3.0) == 3.0
    assert streak.failed(4.0, detail="503", process_status=None) is None
    assert streak.failed(5.0, detail="503", process_status=None) is None
    assert streak.failed(6.0, detail="503", process_status="stopped") == (
        "health check failed 3 times: 503; the process is stopped (kernel state T/t)"
    )


def test_a_long_probe_timeout_is_kept_for_the_first_failed_check() -> None:
    # 1 s rounds with a 10 s timeout (a slow CPU engine): the window stretches to 11 s
    # rather than cutting every check to 3 s.
    rule = HealthRule(interval_s=1.0, timeout_s=10.0, failures=3)
    assert rule.window_s == 11.0
    assert round_budget(rule, since_ok_s=1.0) == 10.0


def test_one_check_lost_to_a_stall_of_the_agent_fails_nothing() -> None:
    # The agent itself was frozen for 20 s: the first check after it fails, the engine
    # has not been heard from for 20 s, and still it is not failed on one check.
    assert not has_failed(DEFAULTS, failures=1, since_ok_s=20.0)
    assert has_failed(DEFAULTS, failures=2, since_ok_s=6.0)
    assert not has_failed(DEFAULTS, failures=2, since_ok_s=5.9)
    assert has_failed(DEFAULTS, failures=3, since_ok_s=0.5)
    assert has_failed(HealthRule(failures=1), failures=1, since_ok_s=0.0)


def test_reason_names_a_stopped_process() -> None:
    reason = failure_reason(
        DEFAULTS, failures=2, since_ok_s=6.0, detail="timed out", process_status="stopped"
    )
    assert reason == (
        "health check failed 2 times in 6.0 s: timed out; the process is stopped (kernel state T/t)"
    )


@pytest.mark.parametrize(
    ("status", "hung", "grace"),
    [
        ("stopped", True, 0.0),
        ("stopped", False, 0.0),
        ("tracing-stop", False, 0.0),
        ("sleeping", True, 3.0),
        ("running", True, 3.0),
        (None, True, 3.0),
        ("sleeping", False, 30.0),
        ("disk-sleep", False, 30.0),
    ],
)
def test_stop_grace(status: str | None, hung: bool, grace: float) -> None:
    assert stop_grace(process_status=status, hung=hung, grace_s=30.0, hung_grace_s=3.0) == grace
    assert stop_grace(process_status=status, hung=hung, grace_s=1.0, hung_grace_s=3.0) <= 1.0
