"""How a drain and the restarts end, and the reasons an engine is given."""

from __future__ import annotations

from sage.unified.agent.supervisor_rules import (
    drain_outcome,
    not_restarted_reason,
    restarts_exhausted_reason,
    startup_timeout_reason,
    with_cause,
)
from sage.unified.sdk.models import EngineLoad


def test_a_drain_ends_when_nothing_runs_or_waits_even_past_its_deadline() -> None:
    idle = EngineLoad(running=0, waiting=0)
    assert drain_outcome(idle, now=5.0, deadline=10.0) == "drained: no requests in flight"
    assert drain_outcome(idle, now=11.0, deadline=10.0) == "drained: no requests in flight"


def test_a_busy_or_unreadable_engine_is_waited_for_until_the_deadline() -> None:
    busy = EngineLoad(running=2, waiting=1)
    assert drain_outcome(busy, now=9.9, deadline=10.0) is None
    assert drain_outcome(None, now=9.9, deadline=10.0) is None
    assert drain_outcome(busy, now=10.0, deadline=10.0) == (
        "drain deadline reached with requests in flight (2 running, 1 waiting); stopped"
    )
    assert drain_outcome(None, now=10.0, deadline=10.0) == (
        "drain deadline reached with requests in flight (unknown); stopped"
    )


def test_reasons_name_the_cap_the_cause_and_the_last_failure() -> None:
    assert restarts_exhausted_reason(
        restarts=5, max_restarts=5, window_s=600.0, last_failure="process exited with code 1"
    ) == (
        "restarts exhausted (5 restarts, at most 5 in 600 s); "
        "last failure: process exited with code 1"
    )
    assert "at most the cap in 60 s" in restarts_exhausted_reason(
        restarts=0, max_restarts=None, window_s=60.0, last_failure="x"
    )
    assert with_cause("drained", "GPU 0 quarantined") == "drained (GPU 0 quarantined)"
    assert with_cause("drained", "") == "drained"
    assert not_restarted_reason("GPU 0 is quarantined", "exit 1") == (
        "not restarted: GPU 0 is quarantined; last failure: exit 1"
    )
    assert startup_timeout_reason(90.0, "") == (
        "not ready within the startup allowance of 90 s (last check: failed)"
    )
