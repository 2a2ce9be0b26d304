"""The agent's GPU fault handling: the quarantine, fed by NVML events and counters.

:class:`GpuHealth` owns the :class:`~sage.unified.agent.quarantine.GpuQuarantine` of
this host and the :class:`~sage.unified.agent.telemetry.gpu_faults.GpuFaultWatcher`
that feeds it; the :class:`~sage.unified.agent.service.Agent` persists its records,
runs :meth:`GpuHealth.watch` in its task group, calls :meth:`GpuHealth.check_counters`
every telemetry round, and reacts to ``on_fault`` (it drains the engines on the GPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence

from sage.unified.agent.quarantine import GpuHealthRecord, GpuQuarantine, xid_fault
from sage.unified.agent.telemetry.gpu_faults import GpuFaultEvent, GpuFaultWatcher
from sage.unified.sdk.clock import Clock
from sage.unified.sdk.models import GpuInfo

__all__ = ["GpuHealth"]

log = logging.getLogger(__name__)


class GpuHealth:
    """Quarantine of this host's GPUs.

    Args:
        watcher: NVML fault events and counters; ``None`` on hosts (or tests) without.
        critical_xids: XIDs that quarantine a GPU.
        clock: time source for the ``since`` of a quarantine.
        on_fault: called on the event loop as ``on_fault(index, reason)`` when a GPU is
            newly quarantined. Must not block.
        agent_id: this agent's id, for the command that clears a GPU.
    """

    def __init__(
        self,
        watcher: GpuFaultWatcher | None,
        *,
        critical_xids: Collection[int],
        clock: Clock,
        on_fault: Callable[[int, str], None],
        agent_id: str,
    ) -> None:
        self._watcher = watcher
        self._critical = frozenset(critical_xids)
        self._clock = clock
        self._on_fault = on_fault
        self._agent_id = agent_id
        self._quarantine = GpuQuarantine()
        self._uuids: dict[int, str | None] = {}

    def load(self, records: Iterable[GpuHealthRecord]) -> None:
        """Take over what the state file kept (on agent start)."""
        self._quarantine = GpuQuarantine(records)
        for index, reason in self._quarantine.quarantined().items():
            log.warning("GPU %d stays quarantined: %s", index, reason)

    def records(self) -> list[GpuHealthRecord]:
        """What to persist in the state file."""
        return self._quarantine.records()

    def annotate(self, gpus: Sequence[GpuInfo]) -> list[GpuInfo]:
        """``gpus`` with ``healthy`` and ``fault`` set."""
        self._uuids.update((gpu.index, gpu.uuid) for gpu in gpus)
        return self._quarantine.annotate(gpus)

    def restart_held(self, gpu_ids: Sequence[int]) -> str | None:
        """Why an engine on ``gpu_ids`` must not be restarted now, or ``None``."""
        for index in gpu_ids:
            fault = self._quarantine.fault(index)
            if fault is not None:
                return (
                    f"GPU {index} is quarantined ({fault}); it is restarted once an operator "
                    f"clears the GPU (sage llm gpu clear {self._agent_id}:{index})"
                )
        return None

    async def watch(self) -> None:
        """Quarantine GPUs on NVML fault events until cancelled (nothing without NVML)."""
        if self._watcher is not None:
            await self._watcher.watch(self._on_event)

    async def check_counters(self) -> None:
        """Read every GPU's fault counters once and quarantine on new evidence."""
        if self._watcher is None:
            return
        readings = await self._watcher.read_counters()
        now = self._clock.time()
        for index, counters in sorted(readings.items()):
            uuid = self._uuids.get(index)
            reason = self._quarantine.observe_counters(index, counters, now=now, uuid=uuid)
            if reason is not None:
                self._quarantined(index, reason)

    async def clear(self, index: int) -> bool:
        """Lift GPU ``index``'s quarantine, acknowledging its counters as they are now.
        Returns whether it was quarantined."""
        readings = await self._watcher.read_counters() if self._watcher is not None else {}
        was = self._quarantine.clear(index, readings.get(index))
        if was:
            log.warning("GPU %d cleared by an operator", index)
        return was

    def fault(self, index: int) -> str | None:
        """Why GPU ``index`` is quarantined, or ``None``."""
        return self._quarantine.fault(index)

    def quarantined(self) -> dict[int, str]:
        """``{index: reason}`` of every quarantined GPU."""
        return self._quarantine.quarantined()

    async def aclose(self) -> None:
        if self._watcher is not None:
            await self._watcher.aclose()

    def _on_event(self, event: GpuFaultEvent) -> None:
        if event.xid is None:
            reason = "uncorrectable (double-bit) ECC error event"
        elif (xid_reason := xid_fault(event.xid, self._critical)) is not None:
            reason = xid_reason
        else:
            log.info("GPU %d: XID %d (not a GPU fault; ignored)", event.index, event.xid)
            return
        now = self._clock.time()
        uuid = self._uuids.get(event.index)
        if self._quarantine.quarantine(event.index, reason, now=now, uuid=uuid):
            self._quarantined(event.index, reason)

    def _quarantined(self, index: int, reason: str) -> None:
        log.error("GPU %d quarantined: %s", index, reason)
        self._on_fault(index, reason)
