"""Attempt planning for failover (pure: no I/O, no sleeping).

A request is retried only while nothing of the response has been read: on a
connection error, a timeout before the response headers, or a 502/503/504. The
plan decides where each attempt goes (a different target after a failure), how
long to wait in between (jittered exponential backoff from 100 ms, or the
server's ``Retry-After`` if longer) and when to give up (``max_attempts`` in all,
or when the wait would pass the call's deadline). The I/O shells in
``_sync_client`` / ``_async_client`` do the waiting; :func:`set_testing` makes
them skip it while the requested delays stay observable (``on_retry``).
"""

from __future__ import annotations

import email.utils
import random as _random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sage.unified.sdk.client._errors import AttemptRecord

__all__ = [
    "RETRYABLE_STATUSES",
    "AttemptPlan",
    "RetryEvent",
    "TargetHealth",
    "backoff_delay",
    "is_testing",
    "parse_retry_after",
    "set_testing",
]

RETRYABLE_STATUSES = frozenset({502, 503, 504})
"""Answers that mean "this gateway/engine cannot take it now": safe to send elsewhere."""

_testing = False


def set_testing(enabled: bool = True) -> bool:
    """Turn the testing switch on or off; returns the previous value.

    With the switch on, the clients do not sleep between attempts (the delay they
    would have waited is still reported to ``on_retry``). For a pytest fixture::

        previous = set_testing(True)
        yield
        set_testing(previous)
    """
    global _testing
    previous = _testing
    _testing = enabled
    return previous


def is_testing() -> bool:
    """Whether :func:`set_testing` turned backoff waits off."""
    return _testing


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Reported to ``on_retry`` before the client waits and tries again."""

    attempt: int
    """The attempt that failed (1-based)."""
    url: str
    error: str
    delay_s: float
    """The wait before the next attempt (not waited when testing)."""


def backoff_delay(
    retry_index: int,
    *,
    base_s: float = 0.1,
    factor: float = 2.0,
    cap_s: float = 5.0,
    random: Callable[[], float] = _random.random,
) -> float:
    """Jittered exponential backoff: a uniform draw in ``[d/2, d]``, ``d = base * factor**i``.

    Half the step is kept so that retries never pile up at zero; the other half is
    jitter so that many clients failing together do not retry together.
    """
    step = min(cap_s, base_s * factor ** max(0, retry_index))
    return step / 2 + (step / 2) * random()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date).

    ``now`` is Unix time (for the date form). Returns ``None`` when absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


class TargetHealth:
    """Remembers which targets failed recently so healthy ones are tried first.

    Without this, every call after a gateway died would first pay the connect
    timeout to the dead one. A failed target is tried last for ``cooldown_s``.
    """

    def __init__(
        self, *, cooldown_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failed_at: dict[str, float] = {}

    def record_failure(self, url: str) -> None:
        self._failed_at[url] = self._clock()

    def record_success(self, url: str) -> None:
        self._failed_at.pop(url, None)

    def order(self, urls: Sequence[str]) -> list[str]:
        """``urls`` with recently failed ones moved to the end (oldest failure first)."""
        now = self._clock()
        healthy = [u for u in urls if now - self._failed_at.get(u, -1e18) >= self._cooldown_s]
        failed = sorted((u for u in urls if u not in healthy), key=lambda u: self._failed_at[u])
        return healthy + failed


class AttemptPlan:
    """The attempts of one call.

    Usage: ``url = plan.next_target()``; on a retryable failure
    ``delay = plan.record_failure(url, reason, retry_after)``; ``None`` means give up,
    otherwise wait ``delay`` seconds and ask for the next target.

    Args:
        targets: base URLs in order of preference (non-empty).
        max_attempts: attempts in all, first one included.
        deadline: absolute time on ``clock`` by which the call must finish.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        max_attempts: int,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not targets:
            raise ValueError("an attempt plan needs at least one target")
        self._targets = list(targets)
        self._max_attempts = max_attempts
        self.deadline = deadline
        self._clock = clock
        self._random = random
        self._failed: set[str] = set()
        self.attempts_made = 0
        self.failures: list[AttemptRecord] = []

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - self._clock())

    def next_target(self) -> str:
        """Where the next attempt goes: the first target not failed in this call.

        Once every target failed, the cycle starts again in order (so a single
        gateway is retried, and two gateways alternate).
        """
        candidates = [t for t in self._targets if t not in self._failed]
        if not candidates:
            self._failed.clear()
            candidates = self._targets
        self.attempts_made += 1
        return candidates[0]

    def record_failure(
        self, url: str, error: str, retry_after: float | None = None
    ) -> float | None:
        """Record a retryable failure of ``url``; returns the wait before the next attempt.

        Returns ``None`` when no attempt is left or the wait would reach the deadline.
        """
        self._failed.add(url)
        self.failures.append(AttemptRecord(url=url, error=error))
        if self.attempts_made >= self._max_attempts:
            return None
        delay = backoff_delay(self.attempts_made - 1, random=self._random)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if self._clock() + delay >= self.deadline:
            return None
        return delay
