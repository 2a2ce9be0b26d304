"""Passive outlier detection (Envoy's ``consecutive_5xx``, in small).

Per backend::

    HEALTHY ──N consecutive counted failures──▶ EJECTED (base * n, cap max)
       ▲                                            │ time passes
       │ success                                    ▼
       └──────────────────────────────────── HALF-OPEN ──failure──▶ EJECTED (n + 1)

- Only connect errors, timeouts and 5xx count: the caller decides and calls
  :meth:`OutlierDetector.record_failure`; for anything else (2xx, 3xx, *4xx*) it calls
  :meth:`OutlierDetector.record_success`, which resets the consecutive count.
- While an ejection runs, results of requests sent before it are ignored (they say
  nothing new). After it, the backend is half-open: :meth:`RoutingState.candidates`
  offers it again and :meth:`RoutingState.acquire` makes the next request its single
  probe; that probe's result (or any result arriving after the ejection ended)
  decides: success restores the backend, failure ejects it again for one step longer.
- ``n`` (times ejected) is not reset by a success; it decays by one per
  ``decay_interval_s`` of health, so a backend that flaps keeps getting longer
  ejections while one that failed once long ago starts again at ``base``.
- The last non-ejected backend of a model is never ejected: routing to a suspect
  backend beats answering 503 for the whole model.

Pure: ``now`` is monotonic seconds passed by the caller.
"""

from __future__ import annotations

from sage.unified.gateway.routing._table import BackendState, RoutingState

__all__ = ["OutlierDetector"]


class OutlierDetector:
    """Ejects backends after consecutive failures; see the module docstring.

    Args:
        state: The routing state whose backends are judged (needed to keep the last
            healthy backend of a model in rotation).
        consecutive_failures: Counted failures in a row that eject a backend.
        base_ejection_s: Ejection time for the first ejection; ``n``-th lasts
            ``base * n``.
        max_ejection_s: Cap on one ejection.
        decay_interval_s: Healthy time after which one past ejection is forgotten.

    Raises:
        ValueError: A non-positive threshold or duration, or ``max < base``.
    """

    __slots__ = (
        "_state",
        "base_ejection_s",
        "consecutive_failures",
        "decay_interval_s",
        "max_ejection_s",
    )

    def __init__(
        self,
        state: RoutingState,
        *,
        consecutive_failures: int = 5,
        base_ejection_s: float = 30.0,
        max_ejection_s: float = 300.0,
        decay_interval_s: float = 300.0,
    ) -> None:
        if consecutive_failures < 1:
            raise ValueError("consecutive_failures must be >= 1")
        if base_ejection_s <= 0 or decay_interval_s <= 0:
            raise ValueError("base_ejection_s and decay_interval_s must be > 0")
        if max_ejection_s < base_ejection_s:
            raise ValueError("max_ejection_s must be >= base_ejection_s")
        self._state = state
        self.consecutive_failures = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.decay_interval_s = decay_interval_s

    def ejection_time_s(self, n: int) -> float:
        """How long the ``n``-th ejection (``n >= 1``) lasts."""
        return min(self.base_ejection_s * n, self.max_ejection_s)

    def is_available(self, backend: BackendState, now: float) -> bool:
        """Whether ``backend`` may take a request now (healthy, or half-open unprobed)."""
        return backend.available(now)

    def record_success(self, backend: BackendState, now: float) -> None:
        """A request to ``backend`` ended without a counted failure (incl. 4xx)."""
        if backend.ejected:
            if now < backend.ejected_until:
                return  # sent before the ejection; the ejection stands
            self._state._clear_ejected(backend)
            backend.restored_at = now
        backend.consecutive_failures = 0

    def record_failure(self, backend: BackendState, now: float) -> bool:
        """A request to ``backend`` failed with a connect error, a timeout or a 5xx.

        Returns:
            ``True`` when this failure ejected the backend (for logs and metrics).
        """
        if backend.ejected:
            if now < backend.ejected_until:
                return False  # sent before the ejection; already out
            # The half-open probe failed: out again, one step longer.
            if not self._others_healthy(backend):
                self._state._clear_ejected(backend)
                return False
            backend.ejection_count += 1
            self._state._set_ejected(backend, now + self.ejection_time_s(backend.ejection_count))
            return True
        backend.consecutive_failures += 1
        if backend.consecutive_failures < self.consecutive_failures:
            return False
        if not self._others_healthy(backend):
            return False
        healthy_for = now - backend.restored_at
        forgotten = int(healthy_for // self.decay_interval_s) if backend.ejection_count else 0
        backend.ejection_count = max(0, backend.ejection_count - forgotten) + 1
        backend.consecutive_failures = 0
        self._state._set_ejected(backend, now + self.ejection_time_s(backend.ejection_count))
        return True

    def _others_healthy(self, backend: BackendState) -> bool:
        model = backend.backend.model
        return any(
            other is not backend and not other.ejected
            for other in self._state.model_backends(model)
        )
