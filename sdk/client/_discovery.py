"""Routing-table discovery: cache, decoding and loop timing (pure: no I/O).

The clients keep the last :class:`RoutingTable` read from
``GET /v1/management/backends`` (the gateway's or the control plane's). With
``watch`` they long-poll ``?after=<revision>&wait=<s>``, so a change is seen as
soon as it is published; otherwise, or when the server answers at once without a
change (it does not support the watch), they poll every ``refresh_interval_s``.
Errors keep the last table and back off exponentially up to the refresh
interval: the loop never crashes and never spins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sage.unified.sdk.models import RoutingTable

__all__ = ["DiscoveryPolicy", "TableCache"]

_MIN_DELAY_S = 0.05


class TableCache:
    """The last routing table and when it was read. Safe to share between threads."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._table: RoutingTable | None = None
        self._updated_at: float | None = None
        self.last_error: str | None = None

    @property
    def table(self) -> RoutingTable | None:
        return self._table

    @property
    def revision(self) -> int | None:
        table = self._table
        return None if table is None else table.revision

    def age(self) -> float | None:
        """Seconds since the last successful read, ``None`` if never."""
        with self._lock:
            return None if self._updated_at is None else self._clock() - self._updated_at

    def update(self, table: RoutingTable) -> bool:
        """Store a freshly read table; returns whether its revision differs from the last.

        A lower revision is accepted too: a restarted coordinator may count afresh.
        """
        with self._lock:
            changed = self._table is None or self._table.revision != table.revision
            self._table = table
            self._updated_at = self._clock()
            self.last_error = None
            return changed

    def record_error(self, error: str) -> None:
        with self._lock:
            self.last_error = error


@dataclass(slots=True)
class DiscoveryPolicy:
    """When the next backends request goes out.

    Args:
        refresh_interval_s: polling period without a watch; also the error backoff cap
            and the long-poll wait (at most ``max_wait_s``).
        watch: use long-polling.
    """

    refresh_interval_s: float
    watch: bool = True
    max_wait_s: float = 30.0
    error_initial_s: float = 0.5
    error_max_s: float | None = None
    """The backoff cap after failures (default: the refresh interval, at least 1 s)."""
    _error_delay: float = 0.0

    @property
    def wait_s(self) -> float:
        """The ``wait`` a long-poll asks for."""
        return max(1.0, min(self.refresh_interval_s, self.max_wait_s))

    def request(self, revision: int | None) -> tuple[int | None, float | None]:
        """``(after, wait)`` for the next request: a plain read until a table is known."""
        if self.watch and revision is not None:
            return revision, self.wait_s
        return None, None

    def after_success(self, *, asked_wait: float | None, changed: bool, elapsed: float) -> float:
        """Delay before the next request after a successful read."""
        self._error_delay = 0.0
        if not self.watch:
            return self.refresh_interval_s
        if asked_wait is None or changed:
            return _MIN_DELAY_S
        if elapsed >= asked_wait / 2:
            return _MIN_DELAY_S  # a real long-poll that timed out: ask again at once
        # An immediate unchanged answer: the server ignores ``wait``; poll instead.
        return self.refresh_interval_s

    def after_error(self, *, permanent: bool = False) -> float:
        """Delay before the next request after a failure (doubling, capped).

        ``permanent`` (e.g. 401/403: the key may not read the table) goes straight to the cap.
        """
        cap = self.error_max_s or max(1.0, self.refresh_interval_s)
        if permanent:
            self._error_delay = cap
        else:
            self._error_delay = min(cap, max(self.error_initial_s, self._error_delay * 2))
        return self._error_delay
