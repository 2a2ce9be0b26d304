"""What the agent reports about one supervised engine: who it is, its state and counters.

:class:`EngineStatus` holds them and moves the state, only through
:func:`sage.unified.sdk.states.transition`, calling :meth:`EngineStatus._changed` after
every change.
Pure: no I/O. :class:`~sage.unified.agent.supervisor.EngineSupervisor` extends it with
the task that drives the engine.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sage.unified.agent.supervisor_rules import REASON_MAX
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import EngineInfo, EngineLoad, EngineSpec
from sage.unified.sdk.states import EngineEvent, EngineState, transition

if TYPE_CHECKING:
    from sage.unified.agent.supervision import ProcessHandle

__all__ = ["EngineStatus"]

# Logged under the supervisor's name, where its other lines about an engine are.
log = logging.getLogger("sage.unified.agent.supervisor")


class EngineStatus:
    """One engine's identity, state, reason and counters (the arguments are
    :class:`~sage.unified.agent.supervisor.EngineSupervisor`'s)."""

    def __init__(
        self,
        *,
        engine_id: str,
        spec: EngineSpec,
        host: str,
        port: int,
        gpu_ids: tuple[int, ...],
        agent_id: str | None,
        clock: Clock,
        process: ProcessHandle | None,
        state: EngineState,
        reason: str,
        incarnation: int,
        restarts: int,
        created_at: float | None,
    ) -> None:
        self.engine_id = engine_id
        self.spec = spec
        self.host = host
        self.port = port
        self.gpu_ids = gpu_ids
        self.agent_id = agent_id
        self._clock = clock
        self.process = process
        self.state = state
        self.reason = reason or ("adopted" if process is not None else "launching")
        self.incarnation = incarnation
        self.restarts = restarts
        self.created_at = clock.time() if created_at is None else created_at
        self.state_changed_at = clock.time()
        self.state_changed_at_mono = clock.monotonic()
        self.last_healthy_at: float | None = None
        self.load = EngineLoad()
        self.probe_failures = 0
        """Failed readiness/health probes so far (a counter for ``/metrics``)."""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.record.pid if self.process is not None else None

    @property
    def stopped(self) -> bool:
        return self.state is EngineState.STOPPED

    def info(self) -> EngineInfo:
        """A snapshot for the API and the coordinator."""
        return EngineInfo(
            id=self.engine_id,
            model=self.spec.name,
            kind=self.spec.kind,
            runtime=self.spec.runtime,
            host=self.host,
            port=self.port,
            url=self.url,
            state=self.state,
            reason=self.reason,
            incarnation=self.incarnation,
            created_at=self.created_at,
            state_changed_at=self.state_changed_at,
            last_heartbeat=self.last_healthy_at,
            gpu_ids=list(self.gpu_ids),
            pid=self.pid,
            load=self.load,
            agent_id=self.agent_id,
            restarts=self.restarts,
            spec=self.spec,
        )

    def _apply(self, event: EngineEvent, reason: str) -> None:
        """Move the state on ``event`` (the load is kept only while the engine serves).

        Raises:
            IllegalTransitionError: ``event`` is not allowed in the current state.
        """
        moved = transition(self.state, event, reason)
        log.info("engine %s: %s -> %s (%s)", self.engine_id, self.state, moved.state, moved.reason)
        self.state = moved.state
        self.reason = moved.reason[:REASON_MAX]
        self.state_changed_at = self._clock.time()
        self.state_changed_at_mono = self._clock.monotonic()
        if moved.state is not EngineState.READY and moved.state is not EngineState.DRAINING:
            self.load = EngineLoad()
        self._changed()

    def _changed(self) -> None:
        """Called after every state, reason, incarnation or pid change."""

    def _set_reason(self, reason: str) -> None:
        self.reason = reason[:REASON_MAX]
        self._changed()
