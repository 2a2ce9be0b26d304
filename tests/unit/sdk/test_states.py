"""The engine state machine: every (state, event) pair, and every (from, to) pair."""

from __future__ import annotations

import itertools

import pytest

from sage.unified.sdk.states import (
    ALLOWED_TRANSITIONS,
    EngineEvent,
    EngineState,
    IllegalTransitionError,
    is_routable,
    transition,
)

S = EngineState
E = EngineEvent

EXPECTED: dict[tuple[EngineState, EngineEvent], EngineState] = {
    (S.STARTING, E.HEALTHY): S.READY,
    (S.STARTING, E.DRAIN): S.DRAINING,
    (S.STARTING, E.STOPPED): S.STOPPED,
    (S.STARTING, E.FAILED): S.ERROR,
    (S.READY, E.DRAIN): S.DRAINING,
    (S.READY, E.STOPPED): S.STOPPED,
    (S.READY, E.FAILED): S.ERROR,
    (S.DRAINING, E.STOPPED): S.STOPPED,
    (S.DRAINING, E.FAILED): S.ERROR,
    (S.ERROR, E.RESTART): S.STARTING,
    (S.ERROR, E.STOPPED): S.STOPPED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)))
def test_every_state_event_pair(state: EngineState, event: EngineEvent) -> None:
    expected = EXPECTED.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransitionError) as info:
            transition(state, event)
        assert info.value.state is state
        assert info.value.event is event
        assert state.value in str(info.value)
    else:
        result = transition(state, event, "why")
        assert result.state is expected
        assert result.reason == "why"


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_allowed_pairs_match_the_architecture(source: EngineState, target: EngineState) -> None:
    # STARTING -> READY -> DRAINING -> STOPPED, any live state -> ERROR, ERROR -> STARTING,
    # and stopping without a drain from STARTING/READY/ERROR.
    allowed = {
        (S.STARTING, S.READY),
        (S.READY, S.DRAINING),
        (S.DRAINING, S.STOPPED),
        (S.STARTING, S.ERROR),
        (S.READY, S.ERROR),
        (S.DRAINING, S.ERROR),
        (S.ERROR, S.STARTING),
        (S.STARTING, S.DRAINING),
        (S.STARTING, S.STOPPED),
        (S.READY, S.STOPPED),
        (S.ERROR, S.STOPPED),
    }
    assert ((source, target) in ALLOWED_TRANSITIONS) == ((source, target) in allowed)


def test_stopped_is_terminal() -> None:
    for event in E:
        with pytest.raises(IllegalTransitionError):
            transition(S.STOPPED, event)


def test_default_reason_when_none_given() -> None:
    assert transition(S.READY, E.DRAIN).reason == "drain requested"
    assert transition(S.ERROR, E.RESTART, "").reason == "restarting"


def test_only_ready_is_routable() -> None:
    assert [s for s in S if is_routable(s)] == [S.READY]
