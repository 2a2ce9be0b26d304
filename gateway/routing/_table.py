"""The gateway's routing state: per-model backend lists plus per-backend counters.

:class:`RoutingState` is rebuilt from each :class:`~sage.unified.sdk.models.RoutingTable`
the coordinator publishes, but the :class:`BackendState` objects of backends whose id
and URL did not change are *kept*, so a new table never resets in-flight counts (drain
accounting and least-load routing depend on them) nor ejection state.

All per-request work is O(1) dict lookups that return precomputed tuples; the lists
are rebuilt only in :meth:`RoutingState.update`. Pure: no I/O, no clock reads except
the documented ``now=None`` default of :meth:`RoutingState.candidates`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sage.unified.sdk.models import Backend, EngineKind, RoutingTable
from sage.unified.sdk.states import is_routable

__all__ = ["BackendState", "RoutingState"]

_Buckets = dict[str, tuple["BackendState", ...]]


HRW_PRIME = (1 << 61) - 1
"""Modulus of the rendezvous weights ``(a * key + b) mod HRW_PRIME`` (a Mersenne prime)."""


def _hrw_coefficients(key: str) -> tuple[int, int]:
    # Each backend draws (a, b) of the 2-universal family a*k + b mod p from a stable
    # digest of its id: weights of one session key are then independent uniform
    # across backends (balanced winners), one multiply-add per backend per pick, and
    # identical in every gateway process (Python's str hash is salted per process).
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    a = int.from_bytes(digest[:8], "big") % (HRW_PRIME - 1) + 1
    b = int.from_bytes(digest[8:], "big") % HRW_PRIME
    return a, b


@dataclass(slots=True, eq=False, weakref_slot=True)
class BackendState:
    """One routable backend as the gateway tracks it.

    Identity matters (``eq=False``): the data plane holds the object between
    :meth:`RoutingState.acquire` and :meth:`RoutingState.release`, even across table
    updates that drop the backend.

    Attributes:
        backend: The routing-table row (replaced on every table update).
        key: The backend id; what ``exclude`` sets and session hashing use.
        in_flight: Requests this gateway has sent and not yet finished.
        waiting: The engine's reported queue (``backend.load.waiting``, ``0`` if unknown).
        consecutive_failures: Counted failures since the last success.
        ejected: Set by the outlier detector; see ``ejected_until``.
        ejected_until: Monotonic time the ejection ends; after it the backend is
            half-open (one probe request may go).
        ejection_count: Times ejected, decayed while healthy (outlier detector).
        restored_at: Monotonic time the last ejection ended with a success.
        probing: A half-open probe request is in flight.
        stalled: The engine went silent and failed a liveness probe (it hangs): out of
            routing, even when every backend of its model is ejected, until a probe
            answers again.
        hrw_a: Rendezvous-hashing multiplier derived from ``key``.
        hrw_b: Rendezvous-hashing offset derived from ``key``.
    """

    backend: Backend
    key: str
    in_flight: int = 0
    waiting: int = 0
    consecutive_failures: int = 0
    ejected: bool = False
    ejected_until: float = 0.0
    ejection_count: int = 0
    restored_at: float = 0.0
    probing: bool = False
    stalled: bool = False
    hrw_a: int = field(default=0, repr=False)
    hrw_b: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.hrw_a, self.hrw_b = _hrw_coefficients(self.key)
        self.waiting = self.backend.load.waiting or 0

    @classmethod
    def of(cls, backend: Backend) -> BackendState:
        """A fresh state (zero counters) for ``backend``."""
        return cls(backend=backend, key=backend.id)

    def set_backend(self, backend: Backend) -> None:
        """Replace the table row (new load figures) keeping every counter."""
        self.backend = backend
        self.waiting = backend.load.waiting or 0

    def available(self, now: float) -> bool:
        """Not ejected, or half-open (ejection over) with no probe in flight; never while
        stalled."""
        if self.stalled:
            return False
        return not self.ejected or (now >= self.ejected_until and not self.probing)


class RoutingState:
    """Routable backends by model and kind, with the gateway's own counters.

    Args:
        table: The first routing table (``None``: only ``static_backends``).
        static_backends: Rows the gateway was given on its command line
            (``--backend URL``); merged into every table. On a duplicate id the
            static row wins and later rows with that id are ignored.

    Not thread-safe: one event loop owns it (every method is synchronous and short).
    """

    __slots__ = ("_by_key", "_by_kind", "_ejected", "_models", "_static", "revision")

    def __init__(
        self, table: RoutingTable | None = None, *, static_backends: Sequence[Backend] = ()
    ) -> None:
        self._static: tuple[Backend, ...] = tuple(static_backends)
        self._by_key: dict[str, BackendState] = {}
        # kind -> model -> backends; the ``None`` entry holds every kind.
        self._by_kind: dict[EngineKind | None, _Buckets] = {}
        self._models: dict[EngineKind | None, list[str]] = {}
        self._ejected = 0
        self.revision = -1
        self.update(table)

    # -- table changes (control plane) ------------------------------------------------

    def update(self, table: RoutingTable | None) -> None:
        """Replace the backend set with ``table`` (plus the static backends).

        Backends whose id *and* URL are unchanged keep their :class:`BackendState`
        (in-flight, failures, ejection); their row is refreshed (new load). A backend
        whose URL changed under the same id starts fresh. Removed backends leave
        every list at once; requests still holding their state release it harmlessly.
        Rows that are not routable (not READY) are ignored.
        """
        rows: Iterable[Backend] = self._static
        if table is not None:
            rows = (*self._static, *table.backends)
            self.revision = table.revision
        old = self._by_key
        new: dict[str, BackendState] = {}
        for row in rows:
            if row.id in new or not is_routable(row.state):
                continue
            state = old.get(row.id)
            if state is not None and state.backend.url == row.url:
                state.set_backend(row)
            else:
                state = BackendState.of(row)
            new[row.id] = state
        by_kind: dict[EngineKind | None, dict[str, list[BackendState]]] = {None: {}}
        for kind in EngineKind:
            by_kind[kind] = {}
        for state in new.values():
            b = state.backend
            by_kind[None].setdefault(b.model, []).append(state)
            by_kind[b.kind].setdefault(b.model, []).append(state)
        self._by_key = new
        self._by_kind = {
            kind: {model: tuple(states) for model, states in buckets.items()}
            for kind, buckets in by_kind.items()
        }
        self._models = {kind: sorted(buckets) for kind, buckets in by_kind.items()}
        self._ejected = sum(1 for s in new.values() if s.ejected)

    # -- per request (data plane) ------------------------------------------------------

    def candidates(
        self, model: str, kind: EngineKind | None = None, *, now: float | None = None
    ) -> tuple[BackendState, ...]:
        """The backends a request for ``model`` may go to.

        Ejected backends are left out (a half-open one with no probe in flight is
        included, so the next pick can probe it) unless *every* backend of the model
        is ejected: then all are returned, because routing to a suspect backend beats
        answering 503 (Envoy's panic mode, in small). A stalled backend (it hangs) is
        never returned: waiting on it again would only delay the 503.

        Args:
            model: The ``model`` field of the request.
            kind: Only backends of this kind (``None``: any).
            now: Monotonic seconds; ``None`` reads :func:`time.monotonic` (only needed
                while some backend is ejected).

        Returns:
            The candidates, empty for an unknown model; do not mutate.
        """
        states = self._by_kind[kind].get(model)
        if states is None:
            return ()
        if self._ejected == 0:
            return states
        if now is None:
            now = time.monotonic()
        healthy = tuple(s for s in states if s.available(now))
        if healthy:
            return healthy
        # Panic mode: suspects beat a 503, but an engine known to hang never does.
        return tuple(s for s in states if not s.stalled)

    def acquire(self, state: BackendState) -> bool:
        """Count a request sent to ``state``; pair with exactly one :meth:`release`.

        Picking an ejected backend with no probe in flight (half-open, or every backend
        ejected) makes this request its probe: no other half-open pick goes there until
        it finishes.

        Returns:
            Whether this request is the probe; pass it back to :meth:`release`.
        """
        state.in_flight += 1
        if state.ejected and not state.probing:
            state.probing = True
            return True
        return False

    def release(self, state: BackendState, probe: bool = False) -> None:
        """A request counted by :meth:`acquire` finished (any outcome, incl. cancel).

        Call it from a ``finally``; it never raises (a double release is clamped at
        zero rather than raising over the request's own error). ``probe`` is what
        :meth:`acquire` returned: only the probe itself ends the probe (a request that
        was sent before the ejection and ends during the probe does not).
        """
        if state.in_flight > 0:
            state.in_flight -= 1
        if probe:
            state.probing = False

    # -- queries -----------------------------------------------------------------------

    def models(self, kind: EngineKind | None = None) -> list[str]:
        """Sorted model names with at least one backend (of ``kind``, if given)."""
        return list(self._models[kind])

    def kinds_of(self, model: str) -> list[EngineKind]:
        """What ``model`` is served as (its backends' kinds), in :class:`EngineKind` order."""
        return [kind for kind in EngineKind if model in self._by_kind[kind]]

    def backends(self) -> list[BackendState]:
        """Every backend of the current table (static ones first)."""
        return list(self._by_key.values())

    def get(self, key: str) -> BackendState | None:
        """The backend with id ``key``, or ``None``."""
        return self._by_key.get(key)

    def model_backends(self, model: str) -> tuple[BackendState, ...]:
        """Every backend serving ``model`` (any kind, ejected or not)."""
        return self._by_kind[None].get(model, ())

    @property
    def ejected_count(self) -> int:
        """How many current backends are ejected (including half-open ones)."""
        return self._ejected

    def __len__(self) -> int:
        return len(self._by_key)

    # -- stalls (engines that hang) -----------------------------------------------------

    def mark_stalled(self, state: BackendState, until: float) -> None:
        """Take a hung backend out of routing (see :attr:`BackendState.stalled`)."""
        self._set_ejected(state, until)
        state.stalled = True

    def clear_stalled(self, state: BackendState) -> None:
        """A hung backend answered a liveness probe: it may take requests again."""
        if state.stalled:
            state.stalled = False
            self._clear_ejected(state)

    # -- used by the outlier detector --------------------------------------------------

    def _set_ejected(self, state: BackendState, until: float) -> None:
        if not state.ejected and self._by_key.get(state.key) is state:
            self._ejected += 1
        state.ejected = True
        state.ejected_until = until
        state.probing = False

    def _clear_ejected(self, state: BackendState) -> None:
        if state.stalled:
            return  # only a liveness probe that answers lifts a stall (clear_stalled)
        if state.ejected and self._by_key.get(state.key) is state:
            self._ejected -= 1
        state.ejected = False
        state.ejected_until = 0.0
        state.probing = False
