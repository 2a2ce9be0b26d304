"""Stall detection: the gateway finds a hung engine itself, within the stall deadline.

An engine that hangs (SIGSTOPped, wedged in a kernel, deadlocked) keeps its TCP port
open: connections succeed and requests wait for ever. Timeouts alone cannot tell it from
an engine generating a long non-streamed answer, which also sends no byte for a while.
So the gateway asks the engine: every request in flight holds a :class:`StallTicket`
whose clock moves with every byte from the engine; a sweep (one task, not a timer per
request) finds tickets silent for ``stall_s`` and sends their engine one ``GET /health``
with ``probe_timeout_s``. An engine that answers is busy, not hung: its requests go on
waiting (and it is asked again a stall period later). One that does not answer is
stalled:

- it leaves routing at once, even in panic mode (every backend ejected), and comes back
  when a later probe answers (the sweep asks every ``stall_s``);
- every request waiting on it with no byte since the probe began is cancelled with
  :attr:`StallTicket.stalled` set: the data plane retries it elsewhere if nothing was
  sent to the client yet (``FailureKind.STALLED``), or ends the stream honestly.

:func:`silent_backends` is the pure rule; :class:`StallMonitor` the I/O around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from sage.unified.gateway._upstream_api import Origin, Upstream
from sage.unified.gateway.routing import BackendState, RoutingState
from sage.unified.gateway.upstream import UpstreamError, UpstreamTimeout

__all__ = ["EngineDrained", "EngineHung", "StallMonitor", "StallTicket", "silent_backends"]

log = logging.getLogger("sage.unified.gateway")

_HEALTH = b"/health"


class EngineHung(UpstreamTimeout):
    """The engine sent nothing for the stall deadline and did not answer ``/health``."""


class EngineDrained(UpstreamError):
    """The engine left routing (drained) and the stream was handed to another one."""


class StallTicket:
    """One request's wait on one backend; ``at`` moves with every byte received."""

    __slots__ = ("at", "backend", "continuable", "handoff", "stalled", "task")

    def __init__(
        self, backend: BackendState, task: asyncio.Task[object] | None, now: float
    ) -> None:
        self.backend = backend
        self.task = task
        self.at = now
        self.stalled = False
        """Set (and the task cancelled) when the backend was found hung."""
        self.continuable = False
        """A stream that may be continued on another engine (set by the relay)."""
        self.handoff = False
        """Set (and the task cancelled) when the backend left routing (drained) more than
        the drain hand-off time ago: the stream is continued elsewhere."""

    def progress(self) -> None:
        """A byte arrived from the engine."""
        self.at = time.monotonic()


def silent_backends(
    tickets: Iterable[StallTicket], now: float, stall_s: float, asked_at: dict[str, float]
) -> list[BackendState]:
    """Backends to probe: some request waited ``stall_s`` without a byte, and the backend
    was not asked in the last ``stall_s`` (many silent requests cost one probe)."""
    found: dict[str, BackendState] = {}
    for ticket in tickets:
        key = ticket.backend.key
        if key in found or now - ticket.at < stall_s:
            continue
        if now - asked_at.get(key, float("-inf")) >= stall_s:
            found[key] = ticket.backend
    return list(found.values())


class StallMonitor:
    """Tracks waits on engines and probes the silent ones.

    Args:
        state: the routing state (stalled backends are marked there).
        upstream: sends the liveness probes (the same client as requests).
        origin_of: a backend's origin.
        stall_s: silence that makes the gateway ask an engine whether it lives.
        probe_timeout_s: how long the engine has to answer ``/health``.
        on_stalled: told about each backend found hung (logs, metrics, ejection count).
    """

    def __init__(
        self,
        state: RoutingState,
        upstream: Upstream,
        origin_of: Callable[[BackendState], Origin],
        *,
        stall_s: float,
        probe_timeout_s: float,
        on_stalled: Callable[[BackendState], None] = lambda backend: None,
        drain_handoff_s: float | None = None,
    ) -> None:
        self._state = state
        self._upstream = upstream
        self._origin_of = origin_of
        self.stall_s = stall_s
        self.probe_timeout_s = probe_timeout_s
        self._on_stalled = on_stalled
        self._tickets: set[StallTicket] = set()
        self._asked_at: dict[str, float] = {}
        self._stalled: dict[str, BackendState] = {}
        self.drain_handoff_s = drain_handoff_s
        self._left_routing: dict[int, float] = {}
        """``id(BackendState)`` → when the sweep first saw it out of the table."""

    def begin(self, backend: BackendState) -> StallTicket:
        """Start watching the current task's wait on ``backend``; pair with :meth:`end`."""
        ticket = StallTicket(backend, asyncio.current_task(), time.monotonic())
        self._tickets.add(ticket)
        return ticket

    def end(self, ticket: StallTicket) -> None:
        self._tickets.discard(ticket)

    async def run(self) -> None:
        """Sweep until cancelled: probe silent backends, re-probe stalled ones."""
        interval = max(0.1, min(1.0, self.stall_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:  # one bad probe must not end stall detection
                log.exception("stall sweep failed; next sweep in %.1f s", interval)

    async def sweep(self) -> None:
        """One pass (what :meth:`run` does every interval)."""
        now = time.monotonic()
        self._forget_gone()
        self._hand_off_drained(now)
        suspects = silent_backends(self._tickets, now, self.stall_s, self._asked_at)
        recheck = [
            backend
            for key, backend in self._stalled.items()
            if now - self._asked_at.get(key, float("-inf")) >= self.stall_s
        ]
        probes = [*suspects, *(b for b in recheck if b not in suspects)]
        if not probes:
            return
        for backend in probes:
            self._asked_at[backend.key] = now
        answers = await asyncio.gather(*(self._alive(b) for b in probes))
        for backend, alive in zip(probes, answers, strict=True):
            if alive:
                self._recovered(backend)
            else:
                self._hung(backend, since=now)

    async def _alive(self, backend: BackendState) -> bool:
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                reply = await self._upstream.request(
                    b"GET", self._origin_of(backend), _HEALTH, [], b""
                )
                try:
                    await reply.read()
                finally:
                    reply.close()
        except (TimeoutError, UpstreamError, ValueError):
            return False
        return reply.status == 200

    def _hand_off_drained(self, now: float) -> None:
        """Continuable streams of a backend that left routing (drained) move on after
        ``drain_handoff_s``, so a drain is not held by long streams."""
        if self.drain_handoff_s is None:
            return
        seen: set[int] = set()
        for ticket in self._tickets:
            backend = ticket.backend
            if not ticket.continuable or self._state.get(backend.key) is backend:
                continue
            seen.add(id(backend))
            since = self._left_routing.setdefault(id(backend), now)
            task = ticket.task
            due = now - since >= self.drain_handoff_s and not ticket.handoff
            if due and task is not None and not task.done():
                ticket.handoff = True
                task.cancel()
        for key in [k for k in self._left_routing if k not in seen]:
            del self._left_routing[key]

    def _forget_gone(self) -> None:
        # A backend the routing table dropped (or replaced) is not probed any more.
        for key, backend in list(self._stalled.items()):
            if self._state.get(key) is not backend:
                del self._stalled[key]
        for key in [k for k in self._asked_at if self._state.get(k) is None]:
            del self._asked_at[key]

    def _hung(self, backend: BackendState, *, since: float) -> None:
        if backend.key not in self._stalled:
            self._stalled[backend.key] = backend
            self._state.mark_stalled(backend, until=float("inf"))
            log.warning(
                "backend %s hangs: no byte for %g s and /health did not answer within %g s; "
                "out of routing until it answers",
                backend.key,
                self.stall_s,
                self.probe_timeout_s,
            )
            self._on_stalled(backend)
        for ticket in [t for t in self._tickets if t.backend is backend and t.at <= since]:
            if not ticket.stalled and ticket.task is not None and not ticket.task.done():
                ticket.stalled = True
                ticket.task.cancel()

    def _recovered(self, backend: BackendState) -> None:
        if self._stalled.pop(backend.key, None) is not None:
            self._state.clear_stalled(backend)
            log.warning("backend %s answers /health again: back in routing", backend.key)
