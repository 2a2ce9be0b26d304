"""GPU readings through NVML (``nvidia-ml-py``, imported as ``pynvml``).

Every call into NVML runs in a worker thread, one at a time (a ``CapacityLimiter(1)``;
NVML handles are not meant for concurrent use and a hung driver must not wedge the
event loop). Each field is read in its own ``try``: boards that do not support a
reading (power on some models, processes on old drivers: ``FunctionNotFound`` for
the ``_v3`` symbol) give ``None`` for that field only. A host without the library
or driver reports ``([], "NVML unavailable: <reason>")`` and the agent carries on.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from sage.unified.sdk.models import GpuInfo, GpuProcess

__all__ = ["INIT_RETRY_S", "GpuReader"]

INIT_RETRY_S = 30.0
"""After ``nvmlInit`` fails, it is tried again at most this often."""

T = TypeVar("T")


class GpuReader:
    """Reads :class:`GpuInfo` for every GPU NVML sees.

    Args:
        nvml: the ``pynvml`` module, or a fake with the same functions and error
            classes (tests). Imported lazily when omitted.
        monotonic: clock for the init retry interval.
    """

    def __init__(
        self, nvml: ModuleType | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._nvml = nvml
        self._monotonic = monotonic
        self._limiter = anyio.CapacityLimiter(1)
        self._initialised = False
        self._init_error: str | None = None
        self._init_failed_at: float | None = None

    async def read(self) -> tuple[list[GpuInfo], str | None]:
        """Read all GPUs.

        Returns:
            ``(gpus, None)`` on success, ``([], reason)`` when NVML cannot be used.
            Never raises. Cancellation abandons the worker thread; the next read waits
            for it to finish (calls stay serialised).
        """
        try:
            return await anyio.to_thread.run_sync(
                self._read_sync, abandon_on_cancel=True, limiter=self._limiter
            )
        except Exception as exc:  # telemetry must never take the agent down
            return [], f"NVML error: {exc!r}"

    async def aclose(self) -> None:
        """Shut NVML down if this reader initialised it. Never raises."""
        if self._initialised:
            await anyio.to_thread.run_sync(self._shutdown_sync, limiter=self._limiter)

    def _shutdown_sync(self) -> None:
        if not self._initialised or self._nvml is None:
            return
        self._initialised = False
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # shutdown must not fail the agent's exit
            return

    def _module(self) -> ModuleType | None:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                self._init_error = f"NVML unavailable: nvidia-ml-py is not installed ({exc})"
                return None
        return self._nvml

    def _ensure_init(self, nvml: ModuleType) -> str | None:
        if self._initialised:
            return None
        now = self._monotonic()
        if self._init_failed_at is not None and now - self._init_failed_at < INIT_RETRY_S:
            return self._init_error
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._init_failed_at = now
            self._init_error = f"NVML unavailable: {_describe(exc)}"
            return self._init_error
        except OSError as exc:
            self._init_failed_at = now
            self._init_error = f"NVML unavailable: {exc}"
            return self._init_error
        self._initialised = True
        self._init_error = None
        self._init_failed_at = None
        return None

    def _read_sync(self) -> tuple[list[GpuInfo], str | None]:
        nvml = self._module()
        if nvml is None:
            return [], self._init_error
        error = self._ensure_init(nvml)
        if error is not None:
            return [], error
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            if isinstance(exc, getattr(nvml, "NVMLError_Uninitialized", ())):
                self._initialised = False
            return [], f"NVML error: {_describe(exc)}"
        except Exception as exc:  # telemetry must never take the agent down
            return [], f"NVML error: {exc!r}"
        gpus = []
        for index in range(count):
            try:
                gpus.append(self._read_device(nvml, index))
            except Exception:  # one broken device must not hide the others
                gpus.append(GpuInfo(index=index))
        return gpus, None

    def _read_device(self, nvml: ModuleType, index: int) -> GpuInfo:
        handle = _field(nvml, nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            return GpuInfo(index=index)
        info = GpuInfo(index=index)
        info.name = _text(_field(nvml, nvml.nvmlDeviceGetName, handle))
        info.uuid = _text(_field(nvml, nvml.nvmlDeviceGetUUID, handle))
        memory = _memory_info(nvml, handle)
        if memory is not None:
            info.memory_total_bytes = _int(getattr(memory, "total", None))
            info.memory_used_bytes = _int(getattr(memory, "used", None))
            info.memory_free_bytes = _int(getattr(memory, "free", None))
            info.memory_reserved_bytes = _int(getattr(memory, "reserved", None))
        rates = _field(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
        if rates is not None:
            info.utilization_percent = _float(getattr(rates, "gpu", None))
            info.memory_utilization_percent = _float(getattr(rates, "memory", None))
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        info.temperature_c = _float(_field(nvml, nvml.nvmlDeviceGetTemperature, handle, sensor))
        info.power_w = _watts(_field(nvml, nvml.nvmlDeviceGetPowerUsage, handle))
        info.power_limit_w = _watts(_field(nvml, nvml.nvmlDeviceGetEnforcedPowerLimit, handle))
        procs = _field(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if procs is not None:
            info.processes = [
                GpuProcess(
                    pid=int(p.pid), used_memory_bytes=_int(getattr(p, "usedGpuMemory", None))
                )
                for p in procs
            ]
        return info


def _memory_info(nvml: ModuleType, handle: object) -> object | None:
    """Memory figures, ``_v2`` where the library and driver have it.

    The v1 call counts the driver's reserved memory (about 480 MiB on an idle H100) as
    used, so its ``used`` never matches ``nvidia-smi``; v2 reports it apart. ``free``
    is the same in both, and placement only reads ``free``.
    """
    v2 = getattr(nvml, "nvmlMemory_v2", None)
    if v2 is not None:
        try:
            memory: object = nvml.nvmlDeviceGetMemoryInfo(handle, v2)
            return memory
        except (nvml.NVMLError, TypeError):  # a driver or binding without v2
            pass
    return _field(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)


def _field(nvml: ModuleType, fn: Callable[..., T], *args: Any) -> T | None:
    try:
        return fn(*args)
    except nvml.NVMLError:
        return None


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # NVMLError.__str__ calls back into NVML
        text = ""
    return text or type(exc).__name__


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _watts(milliwatts: object) -> float | None:
    return milliwatts / 1000.0 if isinstance(milliwatts, int | float) else None
