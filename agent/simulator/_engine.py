"""The simulated engine: run-time settings, the running/waiting scheduler, counters.

Asyncio only (the simulator is a standalone asyncio process). The scheduler admits
a request when fewer than ``max_num_seqs`` run *and* the KV cache has the blocks
its sequences need; the rest wait in FIFO order (the head waits for blocks even if
a later, smaller request would fit, as vLLM's FCFS policy does). That queue is what
``vllm:num_requests_waiting`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sage.unified.agent.simulator._config import SimulatorConfig
from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._kvcache import PrefixCache, SequenceBlocks

__all__ = ["KVNeeds", "RuntimeSettings", "Scheduler", "SimStats", "sleep_until"]


@dataclass(slots=True)
class RuntimeSettings:
    """Behaviour that ``POST /sim/config`` may change while the simulator runs."""

    ttft_ms: float
    itl_ms: float
    output_tokens: int
    prefill_tokens_per_s: float
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
            prefill_tokens_per_s=config.prefill_tokens_per_s,
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
        return (
            self.ttft_ms <= 0
            and self.itl_ms <= 0
            and self.hang_rate <= 0
            and self.prefill_tokens_per_s <= 0
        )


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


KVNeeds = Sequence[tuple[Sequence[int], int]]
"""Per sequence of a request: its prompt token ids and the tokens it may reach."""


class Scheduler:
    """At most ``max_num_seqs`` running requests, each with its KV blocks; FIFO waiting.

    ``running`` and ``waiting`` are exact at every moment: a waiter that is cancelled
    (client gone) leaves the queue at once, and a request admitted for a waiter that
    was cancelled before it resumed is finished again.

    Args:
        max_num_seqs: the running cap.
        cache: the engine's KV cache; requests without sequences (pooling) need none.
    """

    def __init__(self, max_num_seqs: int, cache: PrefixCache) -> None:
        self.max_num_seqs = max_num_seqs
        self.cache = cache
        self.running = 0
        self._waiting: deque[tuple[asyncio.Future[list[SequenceBlocks]], KVNeeds]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for admission."""
        return len(self._waiting)

    def fits_ever(self, needs: KVNeeds) -> bool:
        """Whether ``needs`` could be admitted into an empty cache."""
        cache = self.cache
        return sum(cache.blocks_for(total) for _, total in needs) <= cache.num_blocks

    def try_admit(self, needs: KVNeeds) -> list[SequenceBlocks] | None:
        """Admit now, or ``None`` when full, short of blocks or others are queued (FIFO)."""
        if self.running < self.max_num_seqs and not self._waiting and self.cache.can_admit(needs):
            return self._admit(needs)
        return None

    async def admit(self, needs: KVNeeds) -> list[SequenceBlocks]:
        """Wait for admission (FIFO); returns the sequences' blocks.

        Call :meth:`fits_ever` first: a request that can never fit would block the queue.

        Cancellation: the request leaves the queue (or gives back what it was just
        admitted with) before ``CancelledError`` propagates.
        """
        admitted = self.try_admit(needs)
        if admitted is not None:
            return admitted
        fut: asyncio.Future[list[SequenceBlocks]] = asyncio.get_running_loop().create_future()
        entry = (fut, needs)
        self._waiting.append(entry)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.finish(fut.result(), None)
            else:
                fut.cancel()
                # _pump() may already have popped it (it skips cancelled futures).
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
            raise

    def finish(self, seqs: list[SequenceBlocks], tokens: Sequence[Sequence[int]] | None) -> None:
        """Cache the sequences' final ``tokens`` (``None``: nothing new), free their blocks
        and give the slot to the oldest waiters that fit."""
        for index, seq in enumerate(seqs):
            self.cache.release(seq, tokens[index] if tokens is not None else ())
        self.running -= 1
        self._pump()

    def _admit(self, needs: KVNeeds) -> list[SequenceBlocks]:
        self.running += 1
        return [self.cache.admit(prompt, total) for prompt, total in needs]

    def _pump(self) -> None:
        waiting = self._waiting
        while waiting and self.running < self.max_num_seqs:
            fut, needs = waiting[0]
            if fut.done():
                waiting.popleft()
                continue
            if not self.cache.can_admit(needs):
                break
            waiting.popleft()
            fut.set_result(self._admit(needs))


async def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (at once if it has)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
