"""GPU faults through NVML: critical XID events and the ECC / row-remapping counters.

* **Events.** One NVML event set, registered on every GPU for critical XIDs and
  uncorrectable (double-bit) ECC errors (masked by what each board supports, as NVIDIA's
  Kubernetes device plugin does). :meth:`GpuFaultWatcher.watch` waits on it in a worker
  thread, at most :data:`EVENT_WAIT_MS` per call (``nvmlEventSetWait_v2``), so the loop
  notices a stop within that time and never blocks the event loop.
* **Counters.** :meth:`GpuFaultWatcher.read_counters`, once per telemetry round, in a
  worker thread: ``nvmlDeviceGetTotalEccErrors(UNCORRECTED, VOLATILE)``,
  ``nvmlDeviceGetRemappedRows`` (pending, failure) and
  ``nvmlDeviceGetRetiredPagesPendingStatus``. A reading a board does not support is
  ``None``.

What counts as a fault and how long it lasts is :mod:`sage.unified.agent.quarantine`.
NVML is documented as thread-safe; the event wait runs beside the readings of
:class:`~sage.unified.agent.telemetry.nvml.GpuReader`. A host without NVML has no
events and no counters; the watcher retries ``nvmlInit`` every :data:`INIT_RETRY_S`.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread

from sage.unified.agent.quarantine import FaultCounters

__all__ = ["EVENT_WAIT_MS", "INIT_RETRY_S", "GpuFaultEvent", "GpuFaultWatcher"]

log = logging.getLogger(__name__)

EVENT_WAIT_MS = 500
"""Longest single wait for an NVML event: how soon a stopping watcher returns."""
INIT_RETRY_S = 30.0
"""How often NVML (or an event set) is tried again after it could not be used."""
_ERROR_BACKOFF_S = (1.0, 30.0)


@dataclass(frozen=True, slots=True)
class GpuFaultEvent:
    """An NVML event on GPU ``index``: an XID (``xid``) or a double-bit ECC error."""

    index: int
    xid: int | None
    """The XID for an XID event; ``None`` for a double-bit ECC error event."""


class GpuFaultWatcher:
    """Reads GPU fault events and counters from NVML.

    Args:
        nvml: the ``pynvml`` module, or a fake with the same functions (tests).
            Imported lazily when omitted.
        monotonic: clock for the retry interval.
    """

    def __init__(
        self, nvml: ModuleType | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._nvml = nvml
        self._monotonic = monotonic
        self._state = threading.Lock()
        """Guards initialisation, the event set and shutdown (worker threads)."""
        self._waiting = threading.Lock()
        """Held while a thread waits on the event set, so it is never freed under it."""
        self._initialised = False
        self._failed_at: float | None = None
        self._event_set: Any = None
        self._readings = anyio.CapacityLimiter(1)

    # ---- async API -----------------------------------------------------------------

    async def watch(self, on_event: Callable[[GpuFaultEvent], None]) -> None:
        """Call ``on_event`` (on the event loop) for every fault event, until cancelled.

        Never raises for NVML trouble: it logs, backs off and tries again.
        Cancellation: returns once the current wait has ended (at most
        :data:`EVENT_WAIT_MS`).
        """
        backoff = _ERROR_BACKOFF_S[0]
        while True:
            try:
                events = await anyio.to_thread.run_sync(self._wait_sync)
            except Exception as exc:  # a broken driver must not end the loop
                log.warning("GPU fault events: %s; retrying in %.0f s", _describe(exc), backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _ERROR_BACKOFF_S[1])
                continue
            if events is None:  # no NVML or no event set here
                await anyio.sleep(INIT_RETRY_S)
                continue
            backoff = _ERROR_BACKOFF_S[0]
            for event in events:
                try:
                    on_event(event)
                except Exception:  # one bad event must not end the watch
                    log.exception("GPU fault event %s could not be handled", event)

    async def read_counters(self) -> dict[int, FaultCounters]:
        """Fault counters of every GPU by index; ``{}`` when NVML cannot be used.

        Never raises. Cancellation abandons the worker thread (readings stay serialised).
        """
        try:
            return await anyio.to_thread.run_sync(
                self._counters_sync, abandon_on_cancel=True, limiter=self._readings
            )
        except Exception as exc:  # telemetry must never take the agent down
            log.warning("GPU fault counters unreadable: %s", _describe(exc))
            return {}

    async def aclose(self) -> None:
        """Free the event set and shut NVML down if this watcher started it."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_sync)

    # ---- worker threads ----------------------------------------------------------------

    def _module(self) -> ModuleType | None:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError:
                return None
        return self._nvml

    def _ensure_init(self) -> ModuleType | None:
        """NVML, initialised; ``None`` when it cannot be used (retried later)."""
        nvml = self._module()
        if nvml is None:
            return None
        with self._state:
            if self._initialised:
                return nvml
            now = self._monotonic()
            if self._failed_at is not None and now - self._failed_at < INIT_RETRY_S:
                return None
            try:
                nvml.nvmlInit()
            except (nvml.NVMLError, OSError):
                self._failed_at = now
                return None
            self._initialised = True
            self._failed_at = None
            return nvml

    def _create_event_set(self, nvml: ModuleType) -> Any:
        event_set = nvml.nvmlEventSetCreate()
        wanted = int(nvml.nvmlEventTypeXidCriticalError) | int(nvml.nvmlEventTypeDoubleBitEccError)
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                mask = wanted & int(nvml.nvmlDeviceGetSupportedEventTypes(handle))
                if mask:
                    nvml.nvmlDeviceRegisterEvents(handle, mask, event_set)
            except nvml.NVMLError as exc:  # one board without events must not hide others
                log.warning("GPU %d: no fault events from NVML (%s)", index, _describe(exc))
        return event_set

    def _wait_sync(self) -> list[GpuFaultEvent] | None:
        """One wait of at most :data:`EVENT_WAIT_MS`: the events it saw ([] on timeout);
        ``None`` when there is no NVML or no event set."""
        nvml = self._ensure_init()
        if nvml is None:
            return None
        with self._waiting:
            if self._event_set is None:
                try:
                    self._event_set = self._create_event_set(nvml)
                except nvml.NVMLError as exc:
                    log.warning("no GPU fault events: %s", _describe(exc))
                    return None
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, EVENT_WAIT_MS)
            except nvml.NVMLError as exc:
                if _is_timeout(nvml, exc):
                    return []
                raise
            return [self._event(nvml, data)]

    @staticmethod
    def _event(nvml: ModuleType, data: Any) -> GpuFaultEvent:
        index = int(nvml.nvmlDeviceGetIndex(data.device))
        if int(data.eventType) & int(nvml.nvmlEventTypeXidCriticalError):
            return GpuFaultEvent(index=index, xid=int(data.eventData))
        return GpuFaultEvent(index=index, xid=None)

    def _counters_sync(self) -> dict[int, FaultCounters]:
        nvml = self._ensure_init()
        if nvml is None:
            return {}
        counters = {}
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError:
                continue
            counters[index] = _read_counters(nvml, handle)
        return counters

    def _close_sync(self) -> None:
        with self._waiting, self._state:
            nvml = self._nvml
            if nvml is None or not self._initialised:
                return
            if self._event_set is not None:
                try:
                    nvml.nvmlEventSetFree(self._event_set)
                except nvml.NVMLError as exc:
                    log.warning("could not free the NVML event set: %s", _describe(exc))
                self._event_set = None
            self._initialised = False
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                log.warning("NVML shutdown: %s", _describe(exc))


def _read_counters(nvml: ModuleType, handle: object) -> FaultCounters:
    def field(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(handle, *args)
        except nvml.NVMLError:  # not supported on this board or driver
            return None

    uncorrected = field(
        nvml.nvmlDeviceGetTotalEccErrors,
        nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        nvml.NVML_VOLATILE_ECC,
    )
    rows = field(nvml.nvmlDeviceGetRemappedRows)
    pages = field(nvml.nvmlDeviceGetRetiredPagesPendingStatus)
    return FaultCounters(
        uncorrected_ecc=int(uncorrected) if uncorrected is not None else None,
        remap_pending=bool(rows[2]) if rows is not None else None,
        remap_failed=bool(rows[3]) if rows is not None else None,
        retired_pages_pending=(
            int(pages) == int(nvml.NVML_FEATURE_ENABLED) if pages is not None else None
        ),
    )


def _is_timeout(nvml: ModuleType, exc: BaseException) -> bool:
    timeout_class = getattr(nvml, "NVMLError_Timeout", None)
    if timeout_class is not None and isinstance(exc, timeout_class):
        return True
    return getattr(exc, "value", None) == getattr(nvml, "NVML_ERROR_TIMEOUT", 10)


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # NVMLError.__str__ calls back into NVML
        text = ""
    return text or type(exc).__name__
