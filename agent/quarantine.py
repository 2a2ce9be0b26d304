"""GPU quarantine: which GPUs of this host hold no engine because of a hardware fault.
Pure: no NVML, no I/O (the agent persists :meth:`GpuQuarantine.records` in its state
file, so a quarantine survives an agent restart).

A GPU is quarantined on the first evidence of a fault:

* a **critical XID** event (:data:`CRITICAL_XIDS`), or an uncorrectable (double-bit) ECC
  error event;
* its **counters**, read every telemetry round: uncorrected ECC errors since the last
  driver load or GPU reset (volatile count), a row remapping that is pending (needs a
  GPU reset to take effect) or that failed (the memory cannot repair itself), or a page
  retirement that is pending (pre-Ampere boards).

It stays quarantined until an operator clears it (``POST /v1/gpus/{index}/clear``,
``sage llm gpu clear HOST:INDEX``). Clearing acknowledges the counters as they are at
that moment: the GPU is quarantined again only on new evidence (a higher uncorrected
count, a pending or failed remap or pending retirement that appears after it had gone,
a new critical XID). Counters that drop (a GPU reset zeroes the volatile ones) lower the
acknowledged values with them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import msgspec

from sage.unified.sdk.models import GpuInfo

__all__ = [
    "CRITICAL_XIDS",
    "FaultCounters",
    "GpuHealthRecord",
    "GpuQuarantine",
    "counter_fault",
    "xid_fault",
]

CRITICAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping recorded (reset the GPU to apply it)",
    64: "ECC page retirement or row remapping failed",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error (reset the GPU)",
    95: "uncontained ECC error (reset the GPU)",
}
"""XIDs that quarantine a GPU, with NVIDIA's names (docs.nvidia.com/deploy/xid-errors).

These are the hardware and memory faults after which NVIDIA's catalogue asks for a GPU
reset, a node reboot or an RMA: work placed there again would fail again or compute on
corrupt memory. XIDs caused by the application (13 graphics exception, 31 memory page
fault, 43 GPU stopped processing, 45 preemptive cleanup, 68 video processor exception,
109 context switch timeout) are left out, as NVIDIA's Kubernetes device plugin does: the
engine's own failure handling (exit, restart) covers them. Configurable per agent
(``gpu_fault_xids``)."""


class FaultCounters(msgspec.Struct, frozen=True, kw_only=True):
    """Fault counters of one GPU as NVML reports them; ``None``: not supported there."""

    uncorrected_ecc: int | None = None
    """Uncorrected ECC errors since the last driver load or GPU reset (volatile)."""
    remap_pending: bool | None = None
    """A row remapping waits for a GPU reset (Ampere and newer)."""
    remap_failed: bool | None = None
    """A row remapping failed: no spare row was left."""
    retired_pages_pending: bool | None = None
    """A page retirement waits for a GPU reset (before Ampere)."""


class GpuHealthRecord(msgspec.Struct, kw_only=True):
    """What the agent keeps about one GPU's health (state file)."""

    index: int
    uuid: str | None = None
    fault: str | None = None
    """Why the GPU is quarantined; ``None``: it is not."""
    since: float | None = None
    """Wall-clock time (Unix seconds) of the quarantine."""
    acknowledged: FaultCounters = FaultCounters()
    """Counters as they were at the last clear: only worse ones are a new fault."""


def xid_fault(xid: int, critical: Collection[int] = frozenset(CRITICAL_XIDS)) -> str | None:
    """The quarantine reason for an XID event, or ``None`` when ``xid`` is not critical."""
    if xid not in critical:
        return None
    name = CRITICAL_XIDS.get(xid, "critical XID")
    return f"XID {xid}: {name}"


def counter_fault(
    counters: FaultCounters, acknowledged: FaultCounters = FaultCounters()
) -> str | None:
    """The quarantine reason the counters give (worse than ``acknowledged``), or ``None``."""
    reasons = []
    seen = counters.uncorrected_ecc or 0
    if seen > (acknowledged.uncorrected_ecc or 0):
        reasons.append(f"{seen} uncorrected ECC errors since the last GPU reset")
    if counters.remap_failed and not acknowledged.remap_failed:
        reasons.append("row remapping failed (no spare memory rows left)")
    if counters.remap_pending and not acknowledged.remap_pending:
        reasons.append("row remapping pending (reset the GPU to apply it)")
    if counters.retired_pages_pending and not acknowledged.retired_pages_pending:
        reasons.append("page retirement pending (reset the GPU to apply it)")
    return "; ".join(reasons) or None


def _lower_count(acknowledged: int | None, now: int | None) -> int | None:
    return acknowledged if acknowledged is None or now is None else min(acknowledged, now)


def _lower_flag(acknowledged: bool | None, now: bool | None) -> bool | None:
    return acknowledged if acknowledged is None or now is None else acknowledged and now


def _follow_down(acknowledged: FaultCounters, counters: FaultCounters) -> FaultCounters:
    """Acknowledged values never stay above what the GPU reports now (after a reset)."""
    return FaultCounters(
        uncorrected_ecc=_lower_count(acknowledged.uncorrected_ecc, counters.uncorrected_ecc),
        remap_pending=_lower_flag(acknowledged.remap_pending, counters.remap_pending),
        remap_failed=_lower_flag(acknowledged.remap_failed, counters.remap_failed),
        retired_pages_pending=_lower_flag(
            acknowledged.retired_pages_pending, counters.retired_pages_pending
        ),
    )


class GpuQuarantine:
    """The health of this host's GPUs, by NVML index.

    Args:
        records: what the state file held (an empty list on a first start).
    """

    def __init__(self, records: Iterable[GpuHealthRecord] = ()) -> None:
        self._records: dict[int, GpuHealthRecord] = {r.index: r for r in records}

    def fault(self, index: int) -> str | None:
        """Why GPU ``index`` is quarantined, or ``None``."""
        record = self._records.get(index)
        return record.fault if record is not None else None

    def quarantined(self) -> dict[int, str]:
        """``{index: reason}`` of every quarantined GPU."""
        return {i: r.fault for i, r in sorted(self._records.items()) if r.fault is not None}

    def records(self) -> list[GpuHealthRecord]:
        """Everything to persist, by index."""
        return [self._records[i] for i in sorted(self._records)]

    def quarantine(self, index: int, reason: str, *, now: float, uuid: str | None = None) -> bool:
        """Quarantine GPU ``index`` for ``reason``; ``False`` if it already was (the first
        reason is kept)."""
        record = self._records.setdefault(index, GpuHealthRecord(index=index))
        if uuid is not None:
            record.uuid = uuid
        if record.fault is not None:
            return False
        record.fault = reason
        record.since = now
        return True

    def observe_counters(
        self, index: int, counters: FaultCounters, *, now: float, uuid: str | None = None
    ) -> str | None:
        """Take one reading of GPU ``index``'s counters.

        Returns:
            The reason, when this reading newly quarantines the GPU; else ``None``.
        """
        record = self._records.get(index)
        acknowledged = record.acknowledged if record is not None else FaultCounters()
        if record is not None:
            record.acknowledged = _follow_down(acknowledged, counters)
        reason = counter_fault(counters, acknowledged)
        if reason is None:
            return None
        return reason if self.quarantine(index, reason, now=now, uuid=uuid) else None

    def clear(self, index: int, counters: FaultCounters | None = None) -> bool:
        """Lift the quarantine of GPU ``index``, acknowledging ``counters`` (the current
        reading, when one could be taken). Returns whether it was quarantined."""
        record = self._records.setdefault(index, GpuHealthRecord(index=index))
        was = record.fault is not None
        record.fault = None
        record.since = None
        if counters is not None:
            record.acknowledged = counters
        return was

    def annotate(self, gpus: Sequence[GpuInfo]) -> list[GpuInfo]:
        """``gpus`` with ``healthy`` and ``fault`` set from the quarantine (copies)."""
        annotated = []
        for gpu in gpus:
            fault = self.fault(gpu.index)
            annotated.append(msgspec.structs.replace(gpu, healthy=fault is None, fault=fault))
        return annotated
