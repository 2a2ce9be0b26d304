"""What a restarted agent makes of its state file. Pure: no I/O.

* :func:`prune_records`: STOPPED engines are listed for operators for a while
  (:data:`STOPPED_KEEP_S`, at most :data:`STOPPED_KEEP_COUNT`), then forgotten.
* :func:`resumed_state`: the state an engine resumes in, from its record and whether
  its process (pid + start time) is still alive.
* :func:`engine_record`: the record of a supervised engine, for the next save.
"""

from __future__ import annotations

from typing import Protocol

from sage.unified.agent.statefile import EngineRecord
from sage.unified.sdk.models import EngineSpec
from sage.unified.sdk.states import EngineState

__all__ = [
    "STOPPED_KEEP_COUNT",
    "STOPPED_KEEP_S",
    "SupervisedEngine",
    "engine_record",
    "prune_records",
    "resumed_state",
]

STOPPED_KEEP_S = 600.0
"""STOPPED engines stay listed this long for operators, then are forgotten."""
STOPPED_KEEP_COUNT = 50
"""At most this many STOPPED engines are kept."""


def prune_records(records: list[EngineRecord], now: float) -> list[EngineRecord]:
    """``records`` without the STOPPED engines that are too old or too many."""
    stopped = [r for r in records if r.state is EngineState.STOPPED]
    newest = sorted(stopped, key=lambda r: r.state_changed_at, reverse=True)
    keep = {id(r) for r in newest[:STOPPED_KEEP_COUNT] if now - r.state_changed_at < STOPPED_KEEP_S}
    return [r for r in records if r.state is not EngineState.STOPPED or id(r) in keep]


def resumed_state(record: EngineRecord, *, alive: bool) -> tuple[EngineState, str]:
    """The state (and reason) an engine of the state file resumes in.

    A live process is adopted: it is probed again (a healthy engine is READY after one
    probe), a drain resumes, an ERROR stays (its restart logic runs). A dead one that was
    draining is STOPPED; any other dead one is ERROR and restarted under the policy.
    """
    if record.state is EngineState.STOPPED:
        return EngineState.STOPPED, record.reason
    if alive:
        keep = record.state in (EngineState.DRAINING, EngineState.ERROR)
        state = record.state if keep else EngineState.STARTING
        return state, f"adopted after agent restart (pid {record.pid})"
    if record.state is EngineState.DRAINING:
        return EngineState.STOPPED, "process gone while the agent was down (was draining)"
    return EngineState.ERROR, f"process gone while the agent was down (was {record.state.value})"


class _Process(Protocol):
    @property
    def record(self) -> _ProcessRecord: ...


class _ProcessRecord(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def create_time(self) -> float: ...
    @property
    def pgid(self) -> int: ...


class SupervisedEngine(Protocol):
    """What :func:`engine_record` reads (an ``EngineSupervisor``)."""

    engine_id: str
    spec: EngineSpec
    port: int
    gpu_ids: tuple[int, ...]
    incarnation: int
    created_at: float
    restarts: int
    state: EngineState
    reason: str
    state_changed_at: float

    @property
    def process(self) -> _Process | None: ...


def engine_record(engine: SupervisedEngine) -> EngineRecord:
    """The state-file record of a supervised engine."""
    process = engine.process.record if engine.process is not None else None
    return EngineRecord(
        engine_id=engine.engine_id,
        spec=engine.spec,
        port=engine.port,
        gpu_ids=list(engine.gpu_ids),
        incarnation=engine.incarnation,
        created_at=engine.created_at,
        restarts=engine.restarts,
        state=engine.state,
        reason=engine.reason,
        state_changed_at=engine.state_changed_at,
        pid=process.pid if process is not None else None,
        pid_create_time=process.create_time if process is not None else None,
        pgid=process.pgid if process is not None else None,
    )
