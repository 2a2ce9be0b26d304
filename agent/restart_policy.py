"""When to restart a failed engine. Pure: times are plain floats (monotonic seconds).

Rules:

* Backoff doubles per consecutive restart: ``initial_s``, ``2 * initial_s``, …,
  capped at ``max_s`` (2, 4, 8, 16, 32, 60, 60 … with the defaults).
* Cap: once ``max_restarts`` restarts happened within the last ``window_s``
  seconds, :meth:`RestartPolicy.next_delay` returns ``None`` and the engine stays
  ERROR (5 in 10 minutes by default; systemd's ``StartLimitBurst`` idea).
* Decay: an engine that stayed READY for ``reset_after_s`` (default ``2 * max_s``)
  since :meth:`RestartPolicy.record_healthy` was first called after its last
  restart starts again from ``initial_s``. The restart window is not cleared by
  health: a model that crashes every few minutes still hits the cap.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RestartPolicy"]


class RestartPolicy:
    """Backoff and restart cap for one engine."""

    def __init__(
        self,
        *,
        initial_s: float = 2.0,
        max_s: float = 60.0,
        max_restarts: int = 5,
        window_s: float = 600.0,
        reset_after_s: float | None = None,
    ) -> None:
        if initial_s < 0 or max_s < initial_s:
            raise ValueError(f"need 0 <= initial_s <= max_s, got {initial_s} and {max_s}")
        if max_restarts < 0 or window_s <= 0:
            raise ValueError("max_restarts must be >= 0 and window_s > 0")
        self.initial_s = initial_s
        self.max_s = max_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.reset_after_s = 2 * max_s if reset_after_s is None else reset_after_s
        self._restarts: deque[float] = deque()
        self._consecutive = 0
        self._healthy_since: float | None = None

    @property
    def consecutive(self) -> int:
        """Restarts since the backoff was last reset."""
        return self._consecutive

    def restarts_in_window(self, now: float) -> int:
        """How many restarts happened within the last ``window_s`` seconds."""
        return sum(1 for t in self._restarts if now - t < self.window_s)

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next restart, or ``None`` when the cap is reached."""
        if self.restarts_in_window(now) >= self.max_restarts:
            return None
        exponent = self._effective_consecutive(now)
        # Exponent capped so the float never overflows on very long-lived engines.
        delay: float = self.initial_s * float(2 ** min(exponent, 62))
        return min(delay, self.max_s)

    def record_restart(self, now: float) -> None:
        """Note that the engine was restarted at ``now``."""
        self._consecutive = self._effective_consecutive(now) + 1
        self._healthy_since = None
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] >= self.window_s:
            self._restarts.popleft()

    def record_healthy(self, now: float) -> None:
        """Note that the engine is READY at ``now`` (call it once or on every probe)."""
        if self._healthy_since is None:
            self._healthy_since = now
        elif now - self._healthy_since >= self.reset_after_s:
            self._consecutive = 0

    def _effective_consecutive(self, now: float) -> int:
        if self._healthy_since is not None and now - self._healthy_since >= self.reset_after_s:
            return 0
        return self._consecutive
