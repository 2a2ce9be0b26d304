"""Concurrent etcd transactions sent as one: :class:`TxnBatcher`.

Every report that writes (a new agent, a changed engine, telemetry that is due) is a small
compare-and-swap transaction. A thousand agents registering at once, or a hundred
telemetry writes a second, would be as many HTTP calls, each costing this process about a
millisecond of CPU (docs/performance.md). The batcher joins the transactions that wait
at the same moment into one: their compares and operations side by side, up to
:data:`MAX_OPS` operations. When the joint transaction's compares all hold, each caller
gets its own slice of the answer; when one fails, each transaction is sent again on its
own, so a conflict stays the caller's. Transactions that touch the same key are never
joined (etcd refuses a key twice in one transaction).

Callers wait for their own answer; an etcd error reaches every caller of the batch. Any
other failure of a send (a bug, an error the client did not map) reaches its callers as
an :class:`EtcdUnavailableError` that may have been applied, and the batcher goes on: one
bad transaction must not stop every write of the control plane (a gateway whose batcher
died answered every report with 500 until restarted).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import anyio.abc

from sage.unified.coordinator._etcd import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailableError,
    TxnResult,
)
from sage.unified.coordinator._etcd._types import TxnOp, as_bytes

__all__ = ["MAX_OPS", "TxnBatcher"]

log = logging.getLogger("sage.unified.coordinator")

MAX_OPS = 100
"""Operations in one joint transaction (etcd refuses more than 128 by default)."""


@dataclass(eq=False)
class _Pending:
    compares: Sequence[Compare]
    ops: Sequence[TxnOp]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: TxnResult | None = None
    error: EtcdError | None = None

    def keys(self) -> set[bytes]:
        return {as_bytes(c.key) for c in self.compares} | {as_bytes(op.key) for op in self.ops}


class TxnBatcher:
    """Joins concurrent transactions (see the module docstring); run :meth:`run`.

    Args:
        etcd: the client.
        timeout_s: deadline of one joint transaction.
    """

    def __init__(self, etcd: EtcdClient, timeout_s: float) -> None:
        self._etcd = etcd
        self._timeout_s = timeout_s
        self._queue: list[_Pending] = []
        self._kick = anyio.Event()
        self.joint = 0
        """Joint transactions sent (metrics, tests)."""

    async def txn(self, compares: Sequence[Compare], ops: Sequence[TxnOp]) -> TxnResult:
        """Run one transaction, joined with others waiting now.

        Raises:
            EtcdError: as :meth:`EtcdClient.txn`.
        """
        pending = _Pending(compares, ops)
        self._queue.append(pending)
        self._kick.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        if pending.result is None:  # the batcher stopped before sending it
            raise EtcdUnavailableError("the etcd writer stopped before this transaction")
        return pending.result

    async def run(self) -> None:
        """Send what waits, batch after batch, until cancelled."""
        async with anyio.create_task_group() as task_group:
            while True:
                if not self._queue:
                    self._kick = anyio.Event()
                    await self._kick.wait()
                batch = self._take()
                # One batch in flight at a time: the next one gathers meanwhile.
                try:
                    await self._send(batch, task_group)
                except Exception as exc:  # a bad batch must not stop the writer
                    _fail(batch, exc)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        keys: set[bytes] = set()
        ops = 0
        rest: list[_Pending] = []
        for pending in self._queue:
            mine = pending.keys()
            if batch and (keys & mine or ops + len(pending.ops) > MAX_OPS):
                rest.append(pending)
                continue
            batch.append(pending)
            keys |= mine
            ops += len(pending.ops)
        self._queue = rest
        return batch

    async def _send(self, batch: list[_Pending], task_group: anyio.abc.TaskGroup) -> None:
        if len(batch) == 1:
            await self._alone(batch[0])
            return
        compares = [c for p in batch for c in p.compares]
        ops = [op for p in batch for op in p.ops]
        try:
            joint = await self._etcd.txn(compares, ops, timeout_s=self._timeout_s)
        except EtcdError as exc:
            for pending in batch:
                pending.error = exc
                pending.done.set()
            return
        self.joint += 1
        if not joint.succeeded:
            for pending in batch:  # a conflict is one caller's: each on its own
                task_group.start_soon(self._alone, pending)
            return
        start = 0
        for pending in batch:
            responses = joint.responses[start : start + len(pending.ops)]
            start += len(pending.ops)
            pending.result = TxnResult(joint.header, True, responses)
            pending.done.set()

    async def _alone(self, pending: _Pending) -> None:
        try:
            pending.result = await self._etcd.txn(
                pending.compares, pending.ops, timeout_s=self._timeout_s
            )
        except EtcdError as exc:
            pending.error = exc
        except Exception as exc:  # the caller gets it; the writer goes on
            _fail([pending], exc)
        finally:
            pending.done.set()


def _fail(batch: Sequence[_Pending], exc: Exception) -> None:
    """An unexpected failure of a send: its callers get an unavailable store (the write may
    have been applied), with the cause logged once."""
    log.error("etcd transaction failed unexpectedly: %r", exc, exc_info=exc)
    error = EtcdUnavailableError(
        f"etcd transaction failed unexpectedly ({type(exc).__name__})", maybe_applied=True
    )
    for pending in batch:
        if not pending.done.is_set():
            pending.error = error
            pending.done.set()
