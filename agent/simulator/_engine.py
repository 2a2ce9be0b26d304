"""The simulated engine: run-time settings, the running/waiting scheduler, counters.

Asyncio only (the simulator is a standalone asyncio process). The scheduler admits
at most ``max_num_seqs`` requests at once; the rest wait in FIFO order, which is
what ``vllm:num_requests_waiting`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from sage.unified.agent.simulator._config import SimulatorConfig
from sage.unified.agent.simulator._errors import BadRequestError

__all__ = ["RuntimeSettings", "Scheduler", "SimStats"]


@dataclass(slots=True)
class RuntimeSettings:
    """Behaviour that ``POST /sim/config`` may change while the simulator runs."""

    ttft_ms: float
    itl_ms: float
    output_tokens: int
    failure_rate: float
    hang_rate: float
    crash_after: int | None
    healthy: bool

    @classmethod
    def from_config(cls, config: SimulatorConfig) -> RuntimeSettings:
        """The start-up settings of ``config``."""
        return cls(
            ttft_ms=config.ttft_ms,
            itl_ms=config.itl_ms,
            output_tokens=config.output_tokens,
            failure_rate=config.failure_rate,
            hang_rate=config.hang_rate,
            crash_after=config.crash_after,
            healthy=not config.unhealthy,
        )

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a ``/sim/config`` body; all-or-nothing.

        Raises:
            BadRequestError: an unknown key or a value of the wrong type or range;
                nothing is changed then.
        """
        new = asdict(self)
        for key, value in changes.items():
            if key not in new:
                raise BadRequestError(f"unknown setting {key!r}", param=key)
            new[key] = _check(key, value)
        for key, value in new.items():
            setattr(self, key, value)

    @property
    def instant(self) -> bool:
        """Whether requests finish without waiting (no latency, no hangs)."""
        return self.ttft_ms <= 0 and self.itl_ms <= 0 and self.hang_rate <= 0


def _check(key: str, value: Any) -> Any:
    if key == "healthy":
        if not isinstance(value, bool):
            raise BadRequestError("healthy must be a boolean", param=key)
        return value
    if key == "crash_after" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequestError(f"{key} must be a number", param=key)
    if key in ("output_tokens", "crash_after"):
        if not isinstance(value, int) or value < (1 if key == "output_tokens" else 0):
            raise BadRequestError(
                f"{key} must be a non-negative integer (output_tokens >= 1)", param=key
            )
        return value
    if key in ("failure_rate", "hang_rate") and not 0.0 <= value <= 1.0:
        raise BadRequestError(f"{key} must lie in [0, 1]", param=key)
    if value < 0:
        raise BadRequestError(f"{key} must be >= 0", param=key)
    return float(value)


@dataclass(slots=True)
class SimStats:
    """Counters served by ``GET /sim/stats``."""

    total_requests: int = 0
    inference_requests: int = 0
    aborted: int = 0
    failed: int = 0
    hung: int = 0
    rejected_shutdown: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)


class Scheduler:
    """At most ``max_num_seqs`` running requests; the rest wait in FIFO order.

    ``running`` and ``waiting`` are exact at every moment: a waiter that is cancelled
    (client gone) leaves the queue at once, and a slot handed to a waiter that was
    cancelled before it resumed is released again.
    """

    def __init__(self, max_num_seqs: int, rng: random.Random | None = None) -> None:
        self.max_num_seqs = max_num_seqs
        self.running = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.rng = rng or random.Random()

    @property
    def waiting(self) -> int:
        """Requests queued for a running slot."""
        return len(self._waiting)

    def try_acquire(self) -> bool:
        """Take a slot without waiting; ``False`` when full or others are queued (FIFO)."""
        if self.running < self.max_num_seqs and not self._waiting:
            self.running += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a running slot (FIFO).

        Cancellation: the request leaves the queue (or gives back a slot it was just
        handed) before ``CancelledError`` propagates.
        """
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()
            else:
                fut.cancel()
                # release() may already have popped it (it skips cancelled futures).
                with contextlib.suppress(ValueError):
                    self._waiting.remove(fut)
            raise

    def release(self) -> None:
        """Give back a slot; the oldest waiter gets it."""
        self.running -= 1
        while self._waiting and self.running < self.max_num_seqs:
            fut = self._waiting.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)
