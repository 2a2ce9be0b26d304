"""Push the agent's full snapshot to the coordinator.

``PUT /v1/agents/{agent_id}`` (through the SDK's control-plane client) with an
:class:`AgentReport`, at once on every state change (:meth:`Reporter.report_now`) and
every heartbeat interval (3 s, or what the coordinator's reply says). The report is the whole state, so a
restarted coordinator is rebuilt from the next one (anti-entropy) and a lost
report needs no replay.

When the coordinator is unreachable the engines keep serving; the reporter retries
with jittered exponential backoff (0.5 s doubling to 10 s) and, once it answers
again, the next report carries the full current state. :attr:`Reporter.reachable`
feeds the agent's ``/readyz``.

With several control-plane URLs (every gateway of a highly available deployment) a
report goes to the first that takes it. Once a reply has told the lease TTL, no URL's
attempt may take more than a quarter of it (connect and read), so one URL that hangs
(a paused process, a partition that drops packets) never costs the agent its lease.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio

from sage.unified.sdk.client import AsyncGatewayManagementClient, SageClientError
from sage.unified.sdk.models import AgentReport, AgentReportReply

__all__ = ["Backoff", "Reporter"]

log = logging.getLogger(__name__)

_MIN_INTERVAL_S = 0.1
_ATTEMPT_S = (0.5, 5.0)
"""Bounds of one URL's attempt once the lease TTL is known (a quarter of it)."""


class Backoff:
    """Jittered exponential backoff: ``initial_s`` doubling up to ``max_s``.

    Each delay is drawn uniformly from ``[d/2, d]`` ("equal jitter"), so agents that
    lost the coordinator together do not come back in lockstep.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self._attempt, 30))
        self._attempt += 1
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self._attempt = 0


Sleep = Callable[[float, anyio.Event], Awaitable[None]]


async def _event_sleep(seconds: float, wake: anyio.Event) -> None:
    with anyio.move_on_after(max(0.0, seconds)):
        await wake.wait()


class Reporter:
    """Sends snapshots built by ``snapshot()`` until cancelled.

    Args:
        control_plane: the SDK client of the control plane (one URL or several; a report
            goes to the first that takes it). Owned by the caller.
        agent_id: this agent's id (the path segment).
        snapshot: builds the current :class:`AgentReport`.
        interval_s: heartbeat interval until a reply says otherwise.
        timeout_s: per-request timeout.
        backoff: retry delays while the control plane is unreachable.
        sleep: ``sleep(seconds, wake)``; tests inject one that records delays.
    """

    def __init__(
        self,
        control_plane: AsyncGatewayManagementClient,
        agent_id: str,
        snapshot: Callable[[], AgentReport],
        *,
        interval_s: float = 3.0,
        backoff: Backoff | None = None,
        sleep: Sleep = _event_sleep,
    ) -> None:
        self._control_plane = control_plane
        self._agent_id = agent_id
        self._snapshot = snapshot
        self.interval_s = interval_s
        # Retrying no slower than the heartbeat: a coordinator that comes back has the
        # full snapshot again within one heartbeat (it waits for it before publishing).
        self._backoff = backoff or Backoff(max_s=max(interval_s, 0.5))
        self._sleep = sleep
        self._wake = anyio.Event()
        self.reachable = False
        self.last_error: str | None = "no report sent yet"
        self.last_success_at: float | None = None
        """``anyio.current_time()`` of the last accepted report."""
        self.last_reply: AgentReportReply | None = None
        self.attempt_timeout_s: float | None = None
        """Each URL's attempt is bounded by this once a reply told the lease TTL."""
        self.sent = 0
        self.failures = 0

    def report_now(self) -> None:
        """Send a report as soon as possible (a state changed). Never blocks."""
        self._wake.set()

    async def send_once(self) -> bool:
        """Send one snapshot; return whether the control plane accepted it. Never raises
        for network or HTTP errors (they are recorded in :attr:`last_error`)."""
        try:
            reply = await self._control_plane.report(
                self._agent_id, self._snapshot(), timeout_s=self.attempt_timeout_s
            )
        except SageClientError as exc:
            return self._failed(f"coordinator did not take the report: {exc}")
        self.last_reply = reply
        if reply.lease_ttl_s > 0:
            low, high = _ATTEMPT_S
            self.attempt_timeout_s = min(high, max(low, reply.lease_ttl_s / 4))
        if reply.heartbeat_interval_s > 0:
            self.interval_s = max(_MIN_INTERVAL_S, reply.heartbeat_interval_s)
        if not self.reachable:
            log.info("coordinator reachable at %s", self._control_plane.url)
        self.reachable = True
        self.last_error = None
        self.last_success_at = anyio.current_time()
        self.sent += 1
        self._backoff.reset()
        return True

    def _failed(self, reason: str) -> bool:
        if self.reachable or self.failures == 0:
            log.warning("agent report failed: %s", reason)
        self.reachable = False
        self.last_error = reason
        self.failures += 1
        return False

    async def run(self) -> None:
        """Report at once, then on every change and every interval, until cancelled.

        Cancellation: stops reporting at once (an in-flight request is abandoned).
        """
        while True:
            # Taken before the send: a change during the request triggers one more.
            self._wake = anyio.Event()
            ok = await self.send_once()
            if ok:
                await self._sleep(self.interval_s, self._wake)
            else:
                # Retry on the backoff schedule; a state change does not shorten it,
                # so an outage is not answered with a burst of requests.
                await self._sleep(self._backoff.next_delay(), anyio.Event())
