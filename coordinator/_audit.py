"""The audit trail of control actions: who did what to which target, and how it ended."""

from __future__ import annotations

import logging
from typing import Protocol

from sage.unified.coordinator._errors import CoordinatorError
from sage.unified.coordinator._etcd import EtcdError
from sage.unified.coordinator._store import AuditEntry
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.logsafe import safe_log_value
from sage.unified.sdk.protocol import AuditRecord

__all__ = ["AuditLogStore", "Auditor"]

log = logging.getLogger("sage.unified.coordinator")


class AuditLogStore(Protocol):
    """Where audit entries are kept (a :class:`~._store.Store` is one; so is etcd)."""

    async def audit(self, entry: AuditEntry) -> None: ...
    async def audit_log(self, limit: int = 100) -> list[AuditEntry]: ...


class Auditor:
    """Writes audit entries to the store and reads them back.

    Args:
        store: where entries are kept.
        clock: their timestamps (wall time).
    """

    def __init__(self, store: AuditLogStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def record(self, who: str, action: str, target: str, result: str) -> None:
        """Record a control action; never raises.

        Fields are capped in length: a rejected caller chooses ``target`` (a path
        segment) and must not be able to grow the store or the log without bound.
        """
        entry = AuditEntry(
            at=self._clock.time(),
            who=who[:128],
            action=action[:64],
            target=target[:256],
            result=result[:512],
        )
        # Callers choose the target (a path segment) and much of the result: escaped, so
        # a "%0A" in an engine id cannot forge a second, audit-looking line.
        log.info(
            "audit who=%s action=%s target=%s result=%s",
            safe_log_value(entry.who),
            safe_log_value(entry.action),
            safe_log_value(entry.target),
            safe_log_value(entry.result, 512),
        )
        try:
            await self._store.audit(entry)
        except (CoordinatorError, EtcdError) as exc:
            # The store is unreachable (an etcd outage): expected, one line per entry.
            log.warning(
                "audit entry not stored (%s): action=%s target=%s",
                exc,
                safe_log_value(entry.action),
                safe_log_value(entry.target),
            )
        except Exception:  # the audit trail must not turn a control action into a 500
            log.exception(
                "could not store audit entry: action=%s target=%s",
                safe_log_value(entry.action),
                safe_log_value(entry.target),
            )

    async def entries(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` entries, newest first."""
        return [
            AuditRecord(at=e.at, who=e.who, action=e.action, target=e.target, result=e.result)
            for e in await self._store.audit_log(limit)
        ]
