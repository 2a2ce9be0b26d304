from __future__ import annotations

from sage.unified.coordinator._probing import ProbeTracker
from sage.unified.sdk.states import EngineState


def test_new_engine_ready_after_first_good_probe() -> None:
    tracker = ProbeTracker()
    moved = tracker.record(True)
    assert moved is not None
    assert moved.state is EngineState.READY


def test_three_failures_to_error_then_two_good_to_ready() -> None:
    tracker = ProbeTracker()
    tracker.record(True)
    assert tracker.record(False, "boom") is None
    assert tracker.record(False, "boom") is None
    moved = tracker.record(False, "boom")
    assert moved is not None
    assert moved.state is EngineState.ERROR
    assert "boom" in moved.reason
    first = tracker.record(True)
    assert first is not None
    assert first.state is EngineState.STARTING
    second = tracker.record(True)
    assert second is not None
    assert second.state is EngineState.READY


def test_failure_between_good_probes_resets_recovery() -> None:
    tracker = ProbeTracker(state=EngineState.ERROR)
    tracker.record(True)
    tracker.record(False)
    assert tracker.record(True) is None  # streak restarted: still STARTING
    assert tracker.state is EngineState.STARTING
    moved = tracker.record(True)
    assert moved is not None
    assert moved.state is EngineState.READY
