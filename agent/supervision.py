"""What an :class:`~sage.unified.agent.supervisor.EngineSupervisor` is given: the
process, probe and restart-policy interfaces it drives, its timings, and how it sleeps.

The supervisor knows nothing about HTTP or processes beyond these interfaces, so its
logic is tested with fakes and a fake clock.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread

from sage.unified.agent.liveness import HealthRule, ProbeResult, stop_grace
from sage.unified.agent.supervisor_rules import port_not_the_engines_reason
from sage.unified.sdk.models import EngineLoad

__all__ = [
    "EngineProbe",
    "PortHolderCheck",
    "ProcessHandle",
    "ProcessRecordLike",
    "RestartPolicyLike",
    "Sleep",
    "SupervisorTiming",
    "describe_exit",
    "event_sleep",
    "exit_reason",
    "probe_round",
    "terminate_engine_process",
]

# Logged under the supervisor's name, where its other lines about an engine are.
log = logging.getLogger("sage.unified.agent.supervisor")

_LOG_TAIL_LINES = 5


class ProcessRecordLike(Protocol):
    """How a process is recognised again (``agent.launcher.ProcessRecord``)."""

    @property
    def pid(self) -> int: ...
    @property
    def create_time(self) -> float: ...
    @property
    def pgid(self) -> int: ...


class ProcessHandle(Protocol):
    """A running engine process (``agent.launcher.EngineProcess``)."""

    @property
    def record(self) -> ProcessRecordLike: ...
    @property
    def returncode(self) -> int | None: ...
    def is_alive(self) -> bool: ...
    async def wait(self) -> int: ...
    async def terminate(self, grace_s: float) -> None: ...
    def refresh_tree(self) -> None: ...
    def status(self) -> str | None:
        """psutil's status of the main process (``"stopped"``...); blocking (``/proc``)."""
        ...


class EngineProbe(Protocol):
    """HTTP checks of one engine. Implementations bound each call by their own timeout
    (or ``timeout_s`` when given) and never raise for a failed check (they return
    ``ok=False``, with ``timed_out`` when nothing answered)."""

    async def readiness(self) -> ProbeResult:
        """``/health`` answers 200 *and* ``/v1/models`` lists the served model."""
        ...

    async def health(self, timeout_s: float | None = None) -> ProbeResult:
        """``/health`` answers 200."""
        ...

    async def load(self, timeout_s: float | None = None) -> EngineLoad | None:
        """Load scraped from ``/metrics``; ``None`` when the scrape failed."""
        ...


class RestartPolicyLike(Protocol):
    """``agent.restart_policy.RestartPolicy``."""

    def next_delay(self, now: float) -> float | None: ...
    def record_restart(self, now: float) -> None: ...
    def record_healthy(self, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class SupervisorTiming:
    """Intervals and budgets (from ``AgentSettings``)."""

    probe_interval_s: float = 2.0
    probe_timeout_s: float = 3.0
    probe_failures: int = 3
    stop_grace_s: float = 30.0
    drain_propagation_s: float = 2.0
    default_drain_timeout_s: float = 300.0
    restart_window_s: float = 600.0

    @property
    def health_rule(self) -> HealthRule:
        """When a READY engine counts as failed (:mod:`sage.unified.agent.liveness`)."""
        return HealthRule(
            interval_s=self.probe_interval_s,
            timeout_s=self.probe_timeout_s,
            failures=self.probe_failures,
        )


class PortHolderCheck:
    """Whether the answers on an engine's port come from another process.

    Args:
        engine_id: for the log.
        port: the engine's port.
        port_taken_by_another: ``(pid, port)`` -> who else holds the port, or ``None``
            (see :class:`~sage.unified.agent.supervisor.EngineSupervisor`); ``None``: no
            check.
    """

    def __init__(
        self,
        engine_id: str,
        port: int,
        port_taken_by_another: Callable[[int, int], Awaitable[str | None]] | None,
    ) -> None:
        self._engine_id = engine_id
        self._port = port
        self._port_taken_by_another = port_taken_by_another
        self._warned = ""

    async def someone_else_answers(self, process: ProcessHandle | None) -> str | None:
        """Why the answers on the port are not ``process``'s, or ``None``."""
        if self._port_taken_by_another is None or process is None:
            return None
        held = await self._port_taken_by_another(process.record.pid, self._port)
        if not held:
            return None
        why = port_not_the_engines_reason(self._port, held)
        if why != self._warned:  # once per holder, not every probe round
            self._warned = why
            log.warning("engine %s: %s", self._engine_id, why)
        return why


Sleep = Callable[[float, anyio.Event], Awaitable[None]]
"""``sleep(seconds, wake)``: wait ``seconds`` or until ``wake`` is set."""


async def event_sleep(seconds: float, wake: anyio.Event) -> None:
    """The real :data:`Sleep`: returns after ``seconds`` or as soon as ``wake`` is set."""
    with anyio.move_on_after(max(0.0, seconds)):
        await wake.wait()


def describe_exit(code: int | None) -> str:
    """``process exited with code -9 (SIGKILL)`` and the like."""
    if code is None:
        return "process exited (exit code unknown: not a child of this agent)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"process exited with code {code} ({name})"
    return f"process exited with code {code}"


async def exit_reason(
    process: ProcessHandle | None,
    when: str,
    exit_seen: anyio.Event,
    log_tail: Callable[[int], Awaitable[list[str]]] | None,
) -> str:
    """Why ``process`` is gone: its exit status (when known) and its last log lines.

    Args:
        process: the exited process.
        when: appended to the status, e.g. ``" while starting"``.
        exit_seen: set once the process has been reaped (its status is known then).
        log_tail: returns the last ``n`` lines of the engine's log.
    """
    adopted = bool(getattr(process, "adopted", False))
    if process is not None and process.returncode is None and not adopted:
        # The supervisor may see the zombie before its exit watcher has reaped it; the
        # exit status is known once it has.
        with anyio.move_on_after(2.0):
            await exit_seen.wait()
    # Only a process's real parent sees its exit status (the launcher gives -1).
    code = None if adopted or process is None else process.returncode
    text = describe_exit(code) + when
    if log_tail is not None:
        try:
            lines = await log_tail(_LOG_TAIL_LINES)
        except OSError as exc:
            lines = [f"(log unreadable: {exc})"]
        lines = [line.rstrip() for line in lines if line.strip()]
        if lines:
            text += "; last log lines: " + " | ".join(lines)
    return text


async def probe_round(
    probe: EngineProbe,
    process: ProcessHandle | None,
    budget_s: float,
    scrape: Callable[[float], Coroutine[Any, Any, object]],
) -> tuple[ProbeResult, str | None]:
    """One round of checks of a READY engine, in parallel, all within ``budget_s``.

    Runs ``/health``, ``scrape(budget_s)`` (the load scrape) and a look at the process
    (its descendants are recorded, so a stop reaches workers spawned late, and its
    status is read) at once. A check still running at the deadline counts as timed out.

    Returns:
        The health result and psutil's status of the main process (``None``: unknown).
    """
    health = ProbeResult(False, "timed out", timed_out=True)
    status: str | None = None

    async def check() -> None:
        nonlocal health
        health = await probe.health(budget_s)

    def look(process: ProcessHandle) -> str | None:
        process.refresh_tree()
        return process.status()

    async def observe() -> None:
        nonlocal status
        if process is not None:
            status = await anyio.to_thread.run_sync(look, process)

    with anyio.move_on_after(budget_s):
        async with anyio.create_task_group() as tg:
            tg.start_soon(check)
            tg.start_soon(scrape, budget_s)
            tg.start_soon(observe)
    return health, status


async def terminate_engine_process(
    process: ProcessHandle, *, engine_id: str, hung: bool, timing: SupervisorTiming
) -> None:
    """Stop ``process`` and its tree: SIGTERM, then SIGKILL after the grace it gets.

    The grace is :func:`~sage.unified.agent.liveness.stop_grace`'s: none for a process
    the kernel stopped, one probe timeout for a ``hung`` engine, else ``stop_grace_s``.

    Cancellation: shielded; the stop completes.
    """
    with anyio.CancelScope(shield=True):
        status = await anyio.to_thread.run_sync(process.status)
        grace = stop_grace(
            process_status=status,
            hung=hung,
            grace_s=timing.stop_grace_s,
            hung_grace_s=timing.probe_timeout_s,
        )
        if grace < timing.stop_grace_s:
            log.warning(
                "engine %s: pid %s is %s%s; SIGKILL after %g s, not the %g s grace",
                engine_id,
                process.record.pid,
                status or "in an unknown state",
                " and does not answer" if hung else "",
                grace,
                timing.stop_grace_s,
            )
        await process.terminate(grace)
