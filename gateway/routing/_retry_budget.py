"""Retry budget (concurrency), retry throttle (rate) and the retry back-off.

A retry storm turns a partial outage into a full one, so two limits apply and a retry
needs both:

- :class:`RetryBudget` (Envoy ``retry_budget``): at any moment at most
  ``max(min_retry_concurrency, budget_percent % of active requests)`` retries in
  progress. The floor is 10, not Envoy's 3: a killed engine fails all its in-flight
  requests in the same instant, and at this gateway's scale those should all move on.
- :class:`RetryThrottle` (gRPC A6 retry throttling): a token bucket that failures drain
  and successes refill; retries stop while it is below half full. Concurrency alone
  does not bound the *rate* when failures are instant (connection refused), so without
  it an outage of every backend would double the load on them.

Pure: the caller passes the number of active requests and the random source.
"""

from __future__ import annotations

import random

__all__ = ["RetryBudget", "RetryThrottle"]


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
        min_retry_concurrency: int = 10,
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

    def has_room(self, active_requests: int) -> bool:
        """Whether a slot is free with ``active_requests`` requests in progress."""
        return self.active_retries < self.limit(active_requests)

    def acquire(self) -> None:
        """Take one slot (after :meth:`has_room`); pair it with :meth:`release`."""
        self.active_retries += 1

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


class RetryThrottle:
    """Token bucket that stops retries while most recent attempts fail (gRPC A6).

    Each failed attempt takes one token, each success returns ``token_ratio``; a retry
    is allowed only while more than half of ``max_tokens`` remain. With the defaults a
    healthy gateway can retry a burst of 50 failures at once (an engine dying under
    load), while a total outage stops retrying after those 50 until successes return.

    Args:
        max_tokens: Bucket size.
        token_ratio: Tokens a success returns.

    Raises:
        ValueError: Non-positive settings.
    """

    __slots__ = ("max_tokens", "token_ratio", "tokens")

    def __init__(self, *, max_tokens: float = 100.0, token_ratio: float = 0.1) -> None:
        if max_tokens <= 0 or token_ratio <= 0:
            raise ValueError("max_tokens and token_ratio must be > 0")
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens

    def record_failure(self) -> None:
        self.tokens = max(0.0, self.tokens - 1.0)

    def record_success(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def allows_retry(self) -> bool:
        return self.tokens > self.max_tokens / 2
