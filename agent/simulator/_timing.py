"""Prefill time of the simulated engine (pure; the clock is passed in).

Prefill is the compute-bound part of a request: its uncached prompt tokens go
through the model at ``--prefill-tokens-per-s``. The simulated GPU prefills one
request at a time in admission order, so a burst of long uncached prompts delays
every request behind it; cached tokens cost nothing. Time to first token is then
``(prefill done) - (arrival) + --ttft-ms``.
"""

from __future__ import annotations

__all__ = ["PrefillQueue"]


class PrefillQueue:
    """When each admitted request's prefill completes (one at a time, FIFO)."""

    __slots__ = ("busy_until",)

    def __init__(self) -> None:
        self.busy_until = 0.0

    def schedule(self, now: float, tokens: int, tokens_per_s: float) -> float:
        """Queue ``tokens`` of prefill at ``now``; returns when they are done.

        A rate of 0 means prefill is free: the answer is ``now`` and nothing queues.
        """
        if tokens_per_s <= 0 or tokens <= 0:
            return now
        start = max(now, self.busy_until)
        self.busy_until = start + tokens / tokens_per_s
        return self.busy_until
