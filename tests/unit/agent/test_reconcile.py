"""What a restarted agent makes of each engine in its state file."""

from __future__ import annotations

import pytest

from sage.unified.agent.reconcile import STOPPED_KEEP_S, prune_records, resumed_state
from sage.unified.agent.statefile import EngineRecord
from sage.unified.sdk.models import EngineSpec, Runtime
from sage.unified.sdk.states import EngineState as S


def record(state: S, changed_at: float = 0.0, engine_id: str = "e") -> EngineRecord:
    spec = EngineSpec(model="m", runtime=Runtime.SIMULATED)
    return EngineRecord(
        engine_id=engine_id, spec=spec, port=8900, state=state, pid=42, reason="why",
        state_changed_at=changed_at,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("was", "alive", "state", "reason"),
    [
        (S.READY, True, S.STARTING, "adopted after agent restart (pid 42)"),
        (S.STARTING, True, S.STARTING, "adopted after agent restart (pid 42)"),
        (S.DRAINING, True, S.DRAINING, "adopted after agent restart (pid 42)"),
        (S.ERROR, True, S.ERROR, "adopted after agent restart (pid 42)"),
        (S.READY, False, S.ERROR, "process gone while the agent was down (was READY)"),
        (S.DRAINING, False, S.STOPPED, "process gone while the agent was down (was draining)"),
        (S.STOPPED, False, S.STOPPED, "why"),
    ],
)
def test_resumed_state(was: S, alive: bool, state: S, reason: str) -> None:
    assert resumed_state(record(was), alive=alive) == (state, reason)


def test_old_stopped_engines_are_forgotten() -> None:
    now = 10_000.0
    records = [
        record(S.READY, engine_id="live"),
        record(S.STOPPED, now - 5, engine_id="recent"),
        record(S.STOPPED, now - STOPPED_KEEP_S - 1, engine_id="old"),
    ]
    assert [r.engine_id for r in prune_records(records, now)] == ["live", "recent"]
