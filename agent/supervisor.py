"""One engine's supervisor: drives the shared state machine from probes and process exits.

::

    (launch) ─▶ STARTING ──/health 200 + model listed──▶ READY ──drain──▶ DRAINING
                  │  exit / startup allowance spent        │ exit / N failed    │ in-flight 0
                  ▼                                        ▼  probes            ▼ or deadline
                ERROR ◀────────────────────────────────────┘                 STOPPED
                  │ backoff (RestartPolicy), old tree terminated
                  └──restart──▶ STARTING (same id, same port + GPUs, incarnation + 1)

Every move goes through :func:`sage.unified.sdk.states.transition`; nothing sets a
state by hand. The supervisor knows nothing about HTTP or processes: it is given a
``launch`` callable, an :class:`EngineProbe`, a :class:`~sage.unified.sdk.clock.Clock`
and a ``sleep`` function (:mod:`sage.unified.agent.supervision`), so its logic is tested
with fakes and a fake clock. When a READY engine counts as failed, and how long a
failed one gets to stop, is :mod:`sage.unified.agent.liveness`; how a start, a drain
or the restarts end, and the reasons given, is :mod:`sage.unified.agent.supervisor_rules`.

One task (:meth:`EngineSupervisor.run`) owns all transitions. Operators' commands
(:meth:`~EngineSupervisor.drain`, :meth:`~EngineSupervisor.stop`) only record a request
and wake that task, so two transitions never race.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from sage.unified.agent.engine_status import EngineStatus
from sage.unified.agent.liveness import HealthStreak, ProbeResult, next_round_in
from sage.unified.agent.supervision import (
    EngineProbe,
    PortHolderCheck,
    ProcessHandle,
    ProcessRecordLike,
    RestartPolicyLike,
    Sleep,
    SupervisorTiming,
    event_sleep,
    exit_reason,
    probe_round,
    terminate_engine_process,
)
from sage.unified.agent.supervisor_rules import (
    REASON_MAX,
    drain_outcome,
    not_restarted_reason,
    restarts_exhausted_reason,
    startup_timeout_reason,
    with_cause,
)
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import EngineInfo, EngineLoad, EngineSpec
from sage.unified.sdk.states import EngineEvent, EngineState

__all__ = [
    "EngineProbe",
    "EngineSupervisor",
    "ProbeResult",
    "ProcessHandle",
    "ProcessRecordLike",
    "RestartPolicyLike",
    "SupervisorTiming",
    "event_sleep",
]

log = logging.getLogger(__name__)


class EngineSupervisor(EngineStatus):
    """Drives one engine through its states until it is STOPPED.

    What it reports (``state``, ``reason``, :meth:`info`...) is :class:`EngineStatus`'s.

    Args:
        engine_id: stable id (kept across restarts).
        spec: the launch spec.
        host: address the engine is reachable at (for ``EngineInfo.url``).
        port: the engine's port (kept across restarts).
        gpu_ids: the GPUs it holds (kept across restarts).
        launch: starts a new process for an incarnation; raises on failure.
        probe: the engine's HTTP checks.
        policy: restart backoff and cap.
        clock: time source for deadlines and timestamps.
        timing: intervals and budgets.
        on_change: called (synchronously, must not block) after every state,
            reason, incarnation or pid change.
        log_tail: returns the last ``n`` lines of the engine's log.
        sleep: waits between rounds; tests inject one that moves a fake clock.
        process: an already running process (first launch or adopted), or ``None``
            to launch one when :meth:`run` starts.
        state: initial state (STARTING for new and adopted engines; ERROR for a
            dead adopted engine; DRAINING to resume a drain; STOPPED to only list it).
        port_taken_by_another: ``(pid, port)`` -> who else holds the port, when a
            process outside the engine's tree listens on it and none of the tree does
            (``None`` otherwise, or when it cannot be told). Asked before READY: a
            passing readiness check on a port another process took is not the
            engine's. ``None``: no such check.
        restart_gate: asked before restarting a failed engine: why it must not be
            restarted now (its GPU is quarantined), or ``None``. While it gives a
            reason the engine stays ERROR; :meth:`wake` makes it ask again.
    """

    def __init__(
        self,
        *,
        engine_id: str,
        spec: EngineSpec,
        host: str,
        port: int,
        gpu_ids: tuple[int, ...],
        launch: Callable[[int], Awaitable[ProcessHandle]],
        probe: EngineProbe,
        policy: RestartPolicyLike,
        clock: Clock,
        timing: SupervisorTiming = SupervisorTiming(),
        on_change: Callable[[EngineSupervisor], None] = lambda _s: None,
        log_tail: Callable[[int], Awaitable[list[str]]] | None = None,
        sleep: Sleep = event_sleep,
        process: ProcessHandle | None = None,
        state: EngineState = EngineState.STARTING,
        reason: str = "",
        incarnation: int = 0,
        restarts: int = 0,
        created_at: float | None = None,
        agent_id: str | None = None,
        port_taken_by_another: Callable[[int, int], Awaitable[str | None]] | None = None,
        restart_gate: Callable[[], str | None] = lambda: None,
    ) -> None:
        super().__init__(
            engine_id=engine_id,
            spec=spec,
            host=host,
            port=port,
            gpu_ids=gpu_ids,
            agent_id=agent_id,
            clock=clock,
            process=process,
            state=state,
            reason=reason,
            incarnation=incarnation,
            restarts=restarts,
            created_at=created_at,
        )
        self._launch = launch
        self._probe = probe
        self._policy = policy
        self._timing = timing
        self._on_change = on_change
        self._log_tail = log_tail
        self._sleep = sleep
        self._port_holder = PortHolderCheck(engine_id, port, port_taken_by_another)
        self._restart_gate = restart_gate
        self._hung = False
        """The last failure was checks going unanswered (shortens the stop grace)."""
        self._wake = anyio.Event()
        self._exit_seen = anyio.Event()
        self._stop_requested = False
        self._drain_deadline: float | None = None
        self._drain_why = ""
        self._drain_started = anyio.Event()
        self._stopped = anyio.Event()
        self.first_round_done = anyio.Event()
        """Set after the first readiness probe (or once nothing is left to probe);
        reconciliation waits for it so adopted engines are reported READY at once."""
        if state is EngineState.STOPPED:
            self._stopped.set()
            self._drain_started.set()
            self.first_round_done.set()

    # ---- commands (any task) -----------------------------------------------------

    async def drain(
        self, timeout_s: float | None = None, *, wait: bool = True, why: str = ""
    ) -> EngineInfo:
        """Take the engine out of routing, wait for in-flight requests, then stop it.

        Args:
            timeout_s: drain deadline; ``spec.drain_timeout_s`` when omitted. After
                it the engine is stopped even with requests in flight.
            wait: return only once STOPPED; otherwise return as soon as the engine
                has left READY.
            why: added to the engine's reasons (e.g. its GPU was quarantined).

        Cancellation: cancelling the caller does not cancel the drain.
        """
        if not self.stopped and self._drain_deadline is None:
            budget = timeout_s if timeout_s is not None else self.spec.drain_timeout_s
            self._drain_deadline = self._clock.monotonic() + budget
            self._drain_why = why
            self._wake.set()
        await (self._stopped.wait() if wait else self._drain_started.wait())
        return self.info()

    async def stop(self) -> EngineInfo:
        """Stop the engine now (SIGTERM to its group, SIGKILL after the grace).

        Returns once STOPPED. Cancellation: the stop still happens.
        """
        if not self.stopped:
            self._stop_requested = True
            self._wake.set()
        await self._stopped.wait()
        return self.info()

    def request_stop(self) -> None:
        """Ask for a stop without waiting (used when the agent shuts down)."""
        if not self.stopped:
            self._stop_requested = True
            self._wake.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def wake(self) -> None:
        """Make the driver look again at what it waits for (e.g. the restart gate)."""
        self._wake.set()

    # ---- the driver --------------------------------------------------------------

    async def run(self) -> None:
        """Supervise until STOPPED. Run it in the agent's task group.

        Cancellation: returns at once, leaving the process running (the agent is
        going away and a successor re-adopts it).
        """
        async with anyio.create_task_group() as tg:
            if self.process is not None:
                tg.start_soon(self._watch_exit, self.process)
            while not self.stopped:
                if self._stop_requested:
                    await self._stop_now("stopped by request")
                elif self._drain_deadline is not None or self.state is EngineState.DRAINING:
                    await self._drain_phase()
                elif self.state is EngineState.ERROR:
                    await self._error_phase(tg)
                elif self.state is EngineState.STARTING:
                    if self.process is None:
                        await self._launch_new(tg)
                    else:
                        await self._starting_phase()
                else:
                    await self._ready_phase()
            self.first_round_done.set()
            tg.cancel_scope.cancel()

    # ---- phases ------------------------------------------------------------------

    def _interrupted(self) -> bool:
        return self._stop_requested or self._drain_deadline is not None

    def _exited(self) -> bool:
        return self.process is not None and (
            self._exit_seen.is_set() or not self.process.is_alive()
        )

    async def _pause(self, seconds: float) -> None:
        if not self._wake.is_set():
            await self._sleep(seconds, self._wake)
        if self._wake.is_set():
            self._wake = anyio.Event()

    async def _watch_exit(self, process: ProcessHandle) -> None:
        await process.wait()
        if process is self.process:
            self._exit_seen.set()
            self._wake.set()

    async def _starting_phase(self) -> None:
        deadline = self.state_changed_at_mono + self.spec.startup_timeout_s
        while self.state is EngineState.STARTING and not self._interrupted():
            if self._exited():
                await self._fail(await self._exit_reason(" while starting"))
                return
            result = await self._probe.readiness()
            if result.ok and (
                squatter := await self._port_holder.someone_else_answers(self.process)
            ):
                result = ProbeResult(False, squatter)
            self.first_round_done.set()
            if not result.ok:
                self.probe_failures += 1
            if self._interrupted():
                return
            if result.ok:
                self.last_healthy_at = self._clock.time()
                self._policy.record_healthy(self._clock.monotonic())
                self._apply(EngineEvent.HEALTHY, "health checks passed")
                return
            if self._exited():
                continue
            if self._clock.monotonic() >= deadline:
                await self._fail(startup_timeout_reason(self.spec.startup_timeout_s, result.detail))
                return
            await self._pause(self._timing.probe_interval_s)

    async def _ready_phase(self) -> None:
        self.first_round_done.set()
        streak = HealthStreak(self._timing.health_rule, last_ok=self._clock.monotonic())
        while self.state is EngineState.READY and not self._interrupted():
            if self._exited():
                await self._fail(await self._exit_reason(""))
                return
            started = self._clock.monotonic()
            budget = streak.round_budget(started)
            result, status = await probe_round(self._probe, self.process, budget, self._scrape_load)
            if self._interrupted():
                return
            now = self._clock.monotonic()
            if result.ok:
                streak.passed(now)
                self.last_healthy_at = self._clock.time()
            else:
                if self._exited():
                    continue
                self.probe_failures += 1
                detail = result.detail or "failed"
                reason = streak.failed(now, detail=detail, process_status=status)
                if reason is not None:
                    self._hung = result.timed_out
                    await self._fail(reason)
                    return
            await self._pause(next_round_in(streak.rule, round_took_s=now - started))

    async def _drain_phase(self) -> None:
        if self._drain_deadline is None:
            # Resumed after an agent restart: the original deadline is lost.
            self._drain_deadline = self._clock.monotonic() + self.spec.drain_timeout_s
        deadline = self._drain_deadline
        self.first_round_done.set()
        if self.state is not EngineState.DRAINING and self.state is not EngineState.READY:
            # Never served a request (or not serving now): nothing to wait for.
            await self._stop_now(self._why(f"stopped: drain requested while {self.state.value}"))
            return
        if self.process is None:
            await self._stop_now(self._why("stopped: drain resumed but the process is gone"))
            return
        if self.state is EngineState.READY:
            self._apply(EngineEvent.DRAIN, self._why("draining: waiting for in-flight requests"))
        self._drain_started.set()
        # The gateway keeps routing until it sees DRAINING; on_change pushed it, give
        # the routing table time to propagate before counting in-flight requests.
        propagate_until = self._clock.monotonic() + self._timing.drain_propagation_s
        while not self._stop_requested and self._clock.monotonic() < propagate_until:
            if self._exited():
                break
            await self._pause(propagate_until - self._clock.monotonic())
        reason = "drained"
        while not self._stop_requested:
            if self._exited():
                reason = "drained: " + await self._exit_reason(" while draining")
                break
            load = await self._scrape_load()
            now = self._clock.monotonic()
            if (outcome := drain_outcome(load, now=now, deadline=deadline)) is not None:
                reason = outcome
                break
            await self._pause(min(self._timing.probe_interval_s, max(0.0, deadline - now)))
        await self._stop_now(
            self._why(reason) if not self._stop_requested else "stopped by request during drain"
        )

    def _why(self, text: str) -> str:
        return with_cause(text, self._drain_why)

    async def _error_phase(self, tg: anyio.abc.TaskGroup) -> None:
        self.first_round_done.set()
        await self._terminate_process(hung=self._hung)
        if not await self._restart_allowed():
            return
        now = self._clock.monotonic()
        delay = self._policy.next_delay(now)
        if delay is None:
            if "restarts exhausted" not in self.reason:
                self._set_reason(
                    restarts_exhausted_reason(
                        restarts=self.restarts,
                        max_restarts=getattr(self._policy, "max_restarts", None),
                        window_s=self._timing.restart_window_s,
                        last_failure=self.reason,
                    )
                )
            # Stays ERROR until an operator stops (or drains) it.
            while not self._interrupted():
                await self._pause(math.inf)
            return
        restart_at = now + delay
        while not self._interrupted() and self._clock.monotonic() < restart_at:
            await self._pause(restart_at - self._clock.monotonic())
        # Asked again: the GPU may have been quarantined during the backoff.
        if not await self._restart_allowed():
            return
        self._policy.record_restart(self._clock.monotonic())
        self.incarnation += 1
        self.restarts += 1
        self._apply(
            EngineEvent.RESTART, f"restarting (restart {self.restarts}) after: {self.reason}"
        )
        await self._launch_new(tg)

    async def _restart_allowed(self) -> bool:
        """Wait while the restart gate holds the engine back; ``False`` once interrupted."""
        failure = self.reason
        held = False
        while not self._interrupted() and (why := self._restart_gate()) is not None:
            held = True
            shown = not_restarted_reason(why, failure)
            if self.reason != shown:
                log.warning("engine %s: not restarted: %s", self.engine_id, why)
                self._set_reason(shown)
            await self._pause(math.inf)
        if held and not self._interrupted():
            self._set_reason(failure)
        return not self._interrupted()

    async def _launch_new(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            process = await self._launch(self.incarnation)
        except Exception as exc:
            log.warning("engine %s: launch failed: %s", self.engine_id, exc)
            await self._fail(f"launch failed: {exc}")
            return
        self.process = process
        self._exit_seen = anyio.Event()
        self._hung = False
        self.state_changed_at_mono = self._clock.monotonic()
        tg.start_soon(self._watch_exit, process)
        self._changed()

    # ---- helpers -----------------------------------------------------------------

    async def _scrape_load(self, timeout_s: float | None = None) -> EngineLoad | None:
        load = await self._probe.load(timeout_s)
        if load is not None:
            self.load = load
        # On failure the previous values stay, with their old ``updated_at``: readers
        # see how stale they are; a drain treats the failure as unknown.
        return load

    async def _exit_reason(self, when: str) -> str:
        text = await exit_reason(self.process, when, self._exit_seen, self._log_tail)
        return text[:REASON_MAX]

    async def _fail(self, reason: str) -> None:
        log.warning("engine %s: %s", self.engine_id, reason)
        self._apply(EngineEvent.FAILED, reason)

    async def _terminate_process(self, *, hung: bool = False) -> None:
        process = self.process
        if process is None:
            return
        await terminate_engine_process(
            process, engine_id=self.engine_id, hung=hung, timing=self._timing
        )
        self.process = None
        self._changed()

    def _changed(self) -> None:
        self._on_change(self)

    async def _stop_now(self, reason: str) -> None:
        await self._terminate_process()
        self._apply(EngineEvent.STOPPED, reason)
        self._drain_started.set()
        self._stopped.set()
