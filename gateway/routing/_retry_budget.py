"""Envoy-style retry budget and the retry back-off.

A retry storm turns a partial outage into a full one, so retries are capped by
concurrency, not by rate: at any moment at most
``max(min_retry_concurrency, budget_percent % of active requests)`` retries may be in
progress (Envoy ``retry_budget``: 20 %, minimum 3). Pure: the caller passes the
number of active requests and the random source.
"""

from __future__ import annotations

import random

__all__ = ["RetryBudget"]


class RetryBudget:
    """Counts retries in progress against a share of the active requests.

    Args:
        budget_percent: Share of active requests that may be retries at once.
        min_retry_concurrency: Retries always allowed at once, however few requests.
        backoff_base_s: Centre of the back-off before a retry.
        backoff_jitter: Relative half-width of the uniform back-off window.

    Raises:
        ValueError: A negative setting, or ``backoff_jitter`` outside ``[0, 1]``.
    """

    __slots__ = (
        "active_retries",
        "backoff_base_s",
        "backoff_jitter",
        "budget_percent",
        "min_retry_concurrency",
    )

    def __init__(
        self,
        *,
        budget_percent: float = 20.0,
        min_retry_concurrency: int = 3,
        backoff_base_s: float = 0.050,
        backoff_jitter: float = 0.5,
    ) -> None:
        if budget_percent < 0 or min_retry_concurrency < 0 or backoff_base_s < 0:
            raise ValueError("retry budget settings must be >= 0")
        if not 0.0 <= backoff_jitter <= 1.0:
            raise ValueError("backoff_jitter must be within [0, 1]")
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.backoff_base_s = backoff_base_s
        self.backoff_jitter = backoff_jitter
        self.active_retries = 0

    def limit(self, active_requests: int) -> int:
        """Retries allowed at once with ``active_requests`` requests in progress."""
        share = int(self.budget_percent * active_requests / 100.0)
        return max(self.min_retry_concurrency, share)

    def try_acquire(self, active_requests: int) -> bool:
        """Take one retry slot if the budget allows; pair a ``True`` with :meth:`release`.

        Args:
            active_requests: Requests in progress at the gateway (retries included).
        """
        if self.active_retries < self.limit(active_requests):
            self.active_retries += 1
            return True
        return False

    def release(self) -> None:
        """Give back a slot taken by :meth:`try_acquire` (call it in a ``finally``).

        Never raises: a release without an acquire is clamped at zero rather than
        masking the request's own error.
        """
        if self.active_retries > 0:
            self.active_retries -= 1

    def backoff_s(self, rng: random.Random) -> float:
        """Seconds to wait before a retry: uniform in ``base * (1 ± jitter)``.

        With the defaults, 25-75 ms: long enough for a refused connection not to be
        retried into the same moment, short next to a model's first-token time.
        """
        spread = self.backoff_base_s * self.backoff_jitter
        return self.backoff_base_s - spread + 2.0 * spread * rng.random()
