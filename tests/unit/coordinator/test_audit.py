"""The audit trail never turns a control action into a failure, and what it logs when the
store cannot take an entry is one escaped line: an etcd outage used to log a traceback per
entry, with the caller-chosen target unescaped."""

from __future__ import annotations

import logging

import pytest

from sage.unified.coordinator._audit import Auditor
from sage.unified.coordinator._etcd import EtcdUnavailableError
from sage.unified.coordinator._store import AuditEntry
from sage.unified.sdk.clock import SystemClock

pytestmark = pytest.mark.anyio


class FailingStore:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def audit(self, entry: AuditEntry) -> None:
        raise self.error

    async def audit_log(self, limit: int) -> list[AuditEntry]:
        return []


HOSTILE = "e1\n2026-12-07 ERROR forged line\x1b[31m"


async def test_an_unreachable_store_costs_one_escaped_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auditor = Auditor(FailingStore(EtcdUnavailableError("etcd is down")), SystemClock())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="sage.unified.coordinator"):
        await auditor.record("admin", "engine.stop", HOSTILE, "ok")
    failed = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].levelno == logging.WARNING
    assert failed[0].exc_info is None  # an outage is expected: no traceback per entry
    assert "\n" not in failed[0].getMessage()
    assert "\x1b" not in failed[0].getMessage()


async def test_an_unexpected_store_failure_is_logged_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auditor = Auditor(FailingStore(RuntimeError("bug")), SystemClock())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="sage.unified.coordinator"):
        await auditor.record("admin", "engine.stop", HOSTILE, "ok")  # never raises
    (failed,) = [r for r in caplog.records if "could not store" in r.getMessage()]
    assert failed.exc_info is not None
    assert "\n" not in failed.getMessage()
    assert "\x1b" not in failed.getMessage()
