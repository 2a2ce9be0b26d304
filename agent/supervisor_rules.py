"""What an :class:`~sage.unified.agent.supervisor.EngineSupervisor` decides outside READY,
and the reasons it gives. Pure: no I/O, times are plain floats.

* **Starting**: an engine that is not ready within ``startup_timeout_s`` fails, with the
  last check's detail (:func:`startup_timeout_reason`).
* **Draining**: the drain ends when the engine reports no request running or waiting;
  an unreadable load is "unknown", never "idle"; at the deadline the engine is stopped
  with requests in flight (:func:`drain_outcome`).
* **Restarting**: once the restart policy gives no delay the engine stays ERROR, its
  reason saying so (:func:`restarts_exhausted_reason`); while the restart gate holds it
  back (a quarantined GPU), the reason says why (:func:`not_restarted_reason`).

When a READY engine counts as failed is :mod:`sage.unified.agent.liveness`; when to
restart it is :mod:`sage.unified.agent.restart_policy`.
"""

from __future__ import annotations

from sage.unified.sdk.models import EngineLoad

__all__ = [
    "REASON_MAX",
    "drain_outcome",
    "not_restarted_reason",
    "port_not_the_engines_reason",
    "restarts_exhausted_reason",
    "startup_timeout_reason",
    "with_cause",
]

REASON_MAX = 1500
"""The longest reason kept (an exit reason carries log lines)."""


def startup_timeout_reason(startup_timeout_s: float, last_detail: str) -> str:
    """Why a STARTING engine failed: it was not ready within its allowance."""
    return (
        f"not ready within the startup allowance of {startup_timeout_s:g} s"
        f" (last check: {last_detail or 'failed'})"
    )


def port_not_the_engines_reason(port: int, holder: str) -> str:
    """Why a passing readiness check does not count: ``holder`` answers on the port."""
    return f"port {port} answers, but it is {holder}, not this engine"


def drain_outcome(load: EngineLoad | None, *, now: float, deadline: float) -> str | None:
    """How a drain ends after a load scrape (``None``: the scrape failed), or ``None``
    while it must keep waiting for in-flight requests."""
    if load is not None and load.running == 0 and load.waiting == 0:
        return "drained: no requests in flight"
    if now < deadline:
        return None
    shown = "unknown" if load is None else f"{load.running} running, {load.waiting} waiting"
    return f"drain deadline reached with requests in flight ({shown}); stopped"


def with_cause(text: str, cause: str) -> str:
    """``text`` with the cause of a drain (e.g. a quarantined GPU) appended, if any."""
    return f"{text} ({cause})" if cause else text


def restarts_exhausted_reason(
    *, restarts: int, max_restarts: int | None, window_s: float, last_failure: str
) -> str:
    """The reason of an engine left ERROR because its restarts are used up."""
    cap = "the cap" if max_restarts is None else str(max_restarts)
    return (
        f"restarts exhausted ({restarts} restarts, at most {cap} in {window_s:g} s); "
        f"last failure: {last_failure}"
    )


def not_restarted_reason(why: str, last_failure: str) -> str:
    """The reason of a failed engine the restart gate holds back (``why``)."""
    return f"not restarted: {why}; last failure: {last_failure}"
