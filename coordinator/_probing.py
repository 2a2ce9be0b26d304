"""Health-probe bookkeeping for engines the coordinator probes itself. Pure: no I/O.

Rules (defaults; all configurable):

- a newly registered engine starts ``STARTING`` and becomes ``READY`` after its first
  good probe (an operator just vouched for it; waiting two intervals buys nothing);
- ``probe_failures`` (3) consecutive failed probes move any state to ``ERROR``;
- an ``ERROR`` engine recovers in two steps: the first good probe moves it to
  ``STARTING``, and the second consecutive good probe to ``READY`` (flap damping).
"""

from __future__ import annotations

from dataclasses import dataclass

from sage.unified.sdk.states import EngineState, Transition

__all__ = ["ProbeTracker"]


@dataclass(slots=True)
class ProbeTracker:
    """Consecutive probe results of one engine and the state they imply."""

    failures_to_error: int = 3
    successes_to_start: int = 1
    successes_to_recover: int = 2
    state: EngineState = EngineState.STARTING
    recovering: bool = False
    ok_streak: int = 0
    fail_streak: int = 0

    def record(self, ok: bool, detail: str = "") -> Transition | None:
        """Feed one probe result; returns the new state and reason when it changes."""
        if ok:
            self.fail_streak = 0
            self.ok_streak += 1
            if self.state is EngineState.ERROR:
                self.state = EngineState.STARTING
                self.recovering = True
                if self.successes_to_recover > 1:
                    return Transition(EngineState.STARTING, "health probe ok again; recovering")
            if self.state is EngineState.STARTING:
                need = self.successes_to_recover if self.recovering else self.successes_to_start
                if self.ok_streak >= need:
                    self.state = EngineState.READY
                    self.recovering = False
                    return Transition(EngineState.READY, "health probe ok")
            return None
        self.ok_streak = 0
        self.fail_streak += 1
        if self.state is not EngineState.ERROR and self.fail_streak >= self.failures_to_error:
            self.state = EngineState.ERROR
            return Transition(
                EngineState.ERROR, f"{self.fail_streak} consecutive failed health probes: {detail}"
            )
        return None
