from __future__ import annotations

from collections.abc import Callable

import pytest

from sage.unified.gateway.routing import BackendState, OutlierDetector, RoutingState
from sage.unified.sdk.models import Backend, RoutingTable

BackendFactory = Callable[..., Backend]
TableFactory = Callable[..., RoutingTable]

T0 = 1000.0


def _setup(
    backend: BackendFactory, table: TableFactory, n: int = 3
) -> tuple[RoutingState, OutlierDetector, BackendState]:
    state = RoutingState(table(*(backend(f"b{i}") for i in range(n))))
    b0 = state.get("b0")
    assert b0 is not None
    return state, OutlierDetector(state), b0


def _keys(state: RoutingState, now: float) -> list[str]:
    return [b.key for b in state.candidates("m", now=now)]


def _eject(detector: OutlierDetector, b: BackendState, now: float) -> None:
    results = [detector.record_failure(b, now) for _ in range(5)]
    assert results == [False, False, False, False, True]


def test_five_consecutive_failures_eject(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table)
    for _ in range(4):
        assert detector.record_failure(b0, T0) is False
    assert _keys(state, T0) == ["b0", "b1", "b2"]
    assert detector.record_failure(b0, T0) is True
    assert _keys(state, T0) == ["b1", "b2"]
    assert not detector.is_available(b0, T0)
    assert detector.is_available(b0, T0 + 30)
    assert state.ejected_count == 1


def test_success_resets_the_count(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table)
    for _ in range(4):
        detector.record_failure(b0, T0)
    detector.record_success(b0, T0)  # e.g. a 200, or a 4xx: not counted as failure
    for _ in range(4):
        assert detector.record_failure(b0, T0) is False
    assert _keys(state, T0) == ["b0", "b1", "b2"]


def test_half_open_single_probe_then_restored(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table)
    _eject(detector, b0, T0)
    assert "b0" not in _keys(state, T0 + 29.9)
    # Ejection over: half-open, offered for one probe.
    assert "b0" in _keys(state, T0 + 30)
    probe = state.acquire(b0)
    assert probe  # the probe
    assert "b0" not in _keys(state, T0 + 31)  # no second request while it runs
    detector.record_success(b0, T0 + 31)
    state.release(b0, probe)
    assert _keys(state, T0 + 31) == ["b0", "b1", "b2"]
    assert b0.consecutive_failures == 0
    assert state.ejected_count == 0
    assert state.candidates("m", now=T0 + 31) is state.candidates("m", now=T0 + 31)


def test_probe_cancelled_allows_another_probe(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table)
    _eject(detector, b0, T0)
    probe = state.acquire(b0)  # picked while half-open (at T0 + 30)
    state.release(b0, probe)  # client went away: no result recorded
    assert "b0" in _keys(state, T0 + 40)


def test_a_request_from_before_the_ejection_does_not_end_the_probe(
    backend: BackendFactory, table: TableFactory
) -> None:
    state, detector, b0 = _setup(backend, table)
    long_stream = state.acquire(b0)  # sent while b0 was healthy
    assert long_stream is False
    _eject(detector, b0, T0)
    probe = state.acquire(b0)  # half-open at T0 + 30: the probe
    assert probe is True
    state.release(b0, long_stream)  # the old stream ends while the probe runs
    assert "b0" not in _keys(state, T0 + 31), "a second probe went out"
    state.release(b0, probe)
    assert "b0" in _keys(state, T0 + 31)


def test_ejection_grows_and_caps(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table)
    now = T0
    _eject(detector, b0, now)
    durations = []
    until = b0.ejected_until
    durations.append(until - now)
    for _ in range(12):
        now = b0.ejected_until  # half-open: the probe fails
        assert "b0" in _keys(state, now)
        probe = state.acquire(b0)
        assert detector.record_failure(b0, now) is True
        state.release(b0, probe)
        durations.append(b0.ejected_until - now)
    assert durations[:5] == [30.0, 60.0, 90.0, 120.0, 150.0]
    assert durations[-3:] == [300.0, 300.0, 300.0]
    assert max(durations) == 300.0


def test_failures_during_ejection_are_ignored(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table)
    _eject(detector, b0, T0)
    # Late results of requests sent before the ejection change nothing.
    assert detector.record_failure(b0, T0 + 1) is False
    detector.record_success(b0, T0 + 2)
    assert b0.ejected_until == T0 + 30
    assert "b0" not in _keys(state, T0 + 2)


def test_ejection_count_decays_while_healthy(backend: BackendFactory, table: TableFactory) -> None:
    _state, detector, b0 = _setup(backend, table)
    _eject(detector, b0, T0)
    detector.record_success(b0, T0 + 30)  # back
    _eject(detector, b0, T0 + 40)  # soon again: longer
    assert b0.ejected_until - (T0 + 40) == 60.0
    detector.record_success(b0, T0 + 100)
    _eject(detector, b0, T0 + 100 + 2 * 300)  # two decay intervals healthy: forgotten
    assert b0.ejection_count == 1
    assert b0.ejected_until - (T0 + 700) == 30.0


def test_last_backend_is_never_ejected(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table, n=2)
    b1 = state.get("b1")
    assert b1 is not None
    _eject(detector, b0, T0)
    for _ in range(20):
        assert detector.record_failure(b1, T0) is False
    assert _keys(state, T0) == ["b1"]
    # A single backend model: never ejected either.
    solo = RoutingState(table(backend("only", "solo")))
    only = solo.get("only")
    assert only is not None
    solo_detector = OutlierDetector(solo)
    assert not any(solo_detector.record_failure(only, T0) for _ in range(50))
    assert [b.key for b in solo.candidates("solo", now=T0)] == ["only"]


def test_failed_probe_of_last_backend_restores_it(
    backend: BackendFactory, table: TableFactory
) -> None:
    state, detector, b0 = _setup(backend, table, n=2)
    _eject(detector, b0, T0)
    # b1 disappears from the table; b0 is the only one left (ejected).
    state.update(table(backend("b0")))
    assert state.get("b0") is b0
    assert _keys(state, T0 + 1) == ["b0"]  # everything ejected: offered anyway
    state.acquire(b0)
    assert detector.record_failure(b0, T0 + 31) is False
    assert not b0.ejected
    assert state.ejected_count == 0


def test_all_ejected_falls_back_to_all(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table, n=2)
    _eject(detector, b0, T0)
    b1 = state.get("b1")
    assert b1 is not None
    # Force the other one out too (e.g. table shrank then grew): candidates never empty.
    state._set_ejected(b1, T0 + 30)
    assert _keys(state, T0 + 1) == ["b0", "b1"]


def test_detector_validates_settings(backend: BackendFactory, table: TableFactory) -> None:
    state = RoutingState()
    with pytest.raises(ValueError, match="consecutive_failures"):
        OutlierDetector(state, consecutive_failures=0)
    with pytest.raises(ValueError, match="max_ejection_s"):
        OutlierDetector(state, base_ejection_s=30, max_ejection_s=10)


def test_table_update_keeps_ejection(backend: BackendFactory, table: TableFactory) -> None:
    state, detector, b0 = _setup(backend, table)
    _eject(detector, b0, T0)
    state.update(table(*(backend(f"b{i}") for i in range(3)), revision=2))
    assert state.get("b0") is b0
    assert state.ejected_count == 1
    assert _keys(state, T0 + 1) == ["b1", "b2"]
    state.update(table(backend("b1"), backend("b2"), revision=3))
    assert state.ejected_count == 0
    assert state.candidates("m", now=T0 + 1) is state.candidates("m", now=T0 + 1)
