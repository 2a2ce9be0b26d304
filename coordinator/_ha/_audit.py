"""The audit trail in etcd: one key per entry under ``P audit/``, oldest first.

Every gateway writes the entries of the actions it took; any gateway reads the newest
(one range read, sorted by key, descending). The leader keeps the newest
``AUDIT_KEYS`` and deletes the rest, so a flood of refused requests cannot fill etcd
(whose whole database is meant to stay within a few GB).
"""

from __future__ import annotations

import logging
import time

from sage.unified.coordinator._etcd import DeleteOp, EtcdClient, PutOp, RangeOp
from sage.unified.coordinator._ha._batch import TxnBatcher
from sage.unified.coordinator._ha._records import AuditValue, KeySpace, audit_key
from sage.unified.coordinator._store import AuditEntry
from sage.unified.sdk.models import decode, encode

__all__ = ["AUDIT_KEYS", "EtcdAuditStore"]

log = logging.getLogger("sage.unified.coordinator")

AUDIT_KEYS = 10_000
"""Audit entries kept in etcd (the oldest are deleted by the leader)."""


class EtcdAuditStore:
    """The audit part of a store (what :class:`~sage.unified.coordinator._audit.Auditor`
    needs), in etcd.

    Args:
        etcd: the client.
        batcher: joins the writes of concurrent entries (a flood of refusals is a few
            transactions, not one call each).
        keys: the deployment's key space.
        timeout_s: deadline of one call.
    """

    def __init__(
        self, etcd: EtcdClient, batcher: TxnBatcher, keys: KeySpace, timeout_s: float
    ) -> None:
        self._etcd = etcd
        self._batcher = batcher
        self._keys = keys
        self._timeout_s = timeout_s

    async def audit(self, entry: AuditEntry) -> None:
        value = AuditValue(
            at=entry.at,
            who=entry.who,
            action=entry.action,
            target=entry.target,
            result=entry.result,
        )
        key = audit_key(self._keys, time.time_ns())
        await self._batcher.txn([], [PutOp(key, encode(value))])

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        result = await self._etcd.range(
            RangeOp(self._keys.audit, prefix=True, limit=limit, sort_order="descend"),
            timeout_s=self._timeout_s,
        )
        entries = []
        for kv in result.kvs:
            try:
                value = decode(kv.value, AuditValue)
            except ValueError:
                log.error("audit key %r skipped: not an audit entry", kv.key)
                continue
            entries.append(
                AuditEntry(value.at, value.who, value.action, value.target, value.result)
            )
        return entries

    async def trim(self, keep: int = AUDIT_KEYS) -> int:
        """Delete all but the newest ``keep`` entries; returns how many were deleted."""
        counted = await self._etcd.range(
            RangeOp(self._keys.audit, prefix=True, count_only=True), timeout_s=self._timeout_s
        )
        excess = counted.count - keep
        if excess <= 0:
            return 0
        oldest = await self._etcd.range(
            RangeOp(self._keys.audit, prefix=True, limit=excess, keys_only=True),
            timeout_s=self._timeout_s,
        )
        if not oldest.kvs:
            return 0
        # [first audit key, just after the last one to go): one request for all of them.
        end = oldest.kvs[-1].key + b"\0"
        await self._etcd.txn(
            [], [DeleteOp(self._keys.audit, range_end=end)], timeout_s=self._timeout_s
        )
        return len(oldest.kvs)
