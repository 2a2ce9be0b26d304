"""When a READY engine counts as failed, and how long it gets to stop. Pure: no I/O.

The supervisor probes a READY engine in rounds. One round runs ``/health`` and the
``/metrics`` scrape in parallel under one deadline, so a hung engine costs one probe
timeout per round, not two. The rules, with the defaults (interval 2 s, timeout 3 s,
3 failures):

* **Rounds** start every ``interval_s`` (2 s), or at once when a round took longer.
* **Deadline of a round**: the probe timeout (3 s), cut so that the round ends no later
  than ``window_s`` after the last successful check, but never shorter than
  ``min(timeout_s, interval_s / 2)`` (1 s), so a healthy engine always has time to answer.
* **Failed**: ``failures`` checks in a row failed (3), or at least two in a row failed
  and none has succeeded for ``window_s`` = ``max(failures * interval_s, timeout_s +
  interval_s)`` (6 s). An engine that answers errors fast (503, refused) trips the
  first rule after 3 rounds (~6 s); a hung engine (no answer) trips the second at most
  6 s after its last answered check: its first failed round ends at the 3 s timeout,
  the second at the 6 s mark.
* **Stopping a failed engine**: a process the kernel reports stopped (``T``: SIGSTOP,
  or ``t``: stopped by a tracer) cannot act on SIGTERM, so it is killed at once; an
  engine that stopped answering gets one probe timeout to react to SIGTERM, then
  SIGKILL; any other stop gets the full grace (30 s).

Two failures are required for the time rule so that one check lost to a stall of the
agent itself (its event loop or the host, e.g. the agent frozen for longer than the
window) never fails a healthy engine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "STOPPED_STATUSES",
    "HealthRule",
    "HealthStreak",
    "ProbeResult",
    "failure_reason",
    "has_failed",
    "next_round_in",
    "round_budget",
    "stop_grace",
]

STOPPED_STATUSES = frozenset({"stopped", "tracing-stop"})
"""psutil's names for the kernel states ``T`` and ``t``."""

_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Outcome of one probe; ``detail`` says why it failed (status code, error)."""

    ok: bool
    detail: str = ""
    timed_out: bool = False
    """No answer within the deadline (as opposed to an error status or a refusal)."""


@dataclass(frozen=True, slots=True)
class HealthRule:
    """The probe settings of an agent (``probe_interval_s``, ``probe_timeout_s``,
    ``probe_failures``)."""

    interval_s: float = 2.0
    timeout_s: float = 3.0
    failures: int = 3

    @property
    def window_s(self) -> float:
        """How long without a successful check fails an engine (with 2+ failures)."""
        return max(self.failures * self.interval_s, self.timeout_s + self.interval_s)

    @property
    def shortest_round_s(self) -> float:
        """The least time a round's checks are given."""
        return min(self.timeout_s, self.interval_s / 2)


@dataclass(slots=True)
class HealthStreak:
    """The checks of a READY engine since it became READY: failures in a row, and when
    the last check passed (monotonic seconds)."""

    rule: HealthRule
    last_ok: float
    failures: int = 0

    def round_budget(self, started: float) -> float:
        """Seconds the checks of a round starting at ``started`` get."""
        return round_budget(self.rule, since_ok_s=started - self.last_ok)

    def passed(self, now: float) -> None:
        self.failures = 0
        self.last_ok = now

    def failed(self, now: float, *, detail: str, process_status: str | None) -> str | None:
        """Count a failed check at ``now``; the ERROR reason once the engine has failed."""
        self.failures += 1
        since_ok_s = now - self.last_ok
        if not has_failed(self.rule, failures=self.failures, since_ok_s=since_ok_s):
            return None
        return failure_reason(
            self.rule,
            failures=self.failures,
            since_ok_s=since_ok_s,
            detail=detail,
            process_status=process_status,
        )


def round_budget(rule: HealthRule, *, since_ok_s: float) -> float:
    """Seconds the checks of a round starting ``since_ok_s`` after the last success get."""
    return max(rule.shortest_round_s, min(rule.timeout_s, rule.window_s - since_ok_s))


def next_round_in(rule: HealthRule, *, round_took_s: float) -> float:
    """Seconds to wait after a round that took ``round_took_s`` before the next one."""
    return max(0.0, rule.interval_s - round_took_s)


def has_failed(rule: HealthRule, *, failures: int, since_ok_s: float) -> bool:
    """Whether ``failures`` failed checks in a row, the last one ``since_ok_s`` after
    the last success, make the engine ERROR."""
    if failures >= rule.failures:
        return True
    return failures >= min(2, rule.failures) and since_ok_s >= rule.window_s - _EPSILON


def failure_reason(
    rule: HealthRule,
    *,
    failures: int,
    since_ok_s: float,
    detail: str,
    process_status: str | None = None,
) -> str:
    """The engine's ERROR reason, e.g. ``health check failed 3 times: 503``."""
    if failures >= rule.failures:
        text = f"health check failed {failures} times: {detail}"
    else:
        text = f"health check failed {failures} times in {since_ok_s:.1f} s: {detail}"
    if process_status in STOPPED_STATUSES:
        text += f"; the process is {process_status} (kernel state T/t)"
    return text


def stop_grace(
    *, process_status: str | None, hung: bool, grace_s: float, hung_grace_s: float
) -> float:
    """Seconds between SIGTERM and SIGKILL for a process in ``process_status``.

    Args:
        process_status: psutil's status of the engine's main process (``None``: unknown).
        hung: the engine failed because its checks went unanswered.
        grace_s: the configured grace (``stop_grace_s``).
        hung_grace_s: what a hung engine gets to react to SIGTERM.
    """
    if process_status in STOPPED_STATUSES:
        return 0.0
    if hung:
        return min(grace_s, hung_grace_s)
    return grace_s
