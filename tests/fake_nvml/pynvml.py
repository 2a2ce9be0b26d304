"""A fake ``pynvml`` (nvidia-ml-py 13) at the library boundary, driven by a JSON file.

Put this folder first on ``PYTHONPATH`` and name the file in ``SAGE_FAKE_NVML``: the
agent then imports this module as ``pynvml`` and sees the GPUs the file describes. A
test changes the file to inject faults, while the agent runs::

    {"gpus": [{"uuid": "GPU-0", "name": "Fake H100", "total_gib": 80, "free_gib": 70,
               "ecc_uncorrected": 0, "remap_pending": 0, "remap_failure": 0,
               "retired_pending": 0}],
     "events": [{"index": 0, "xid": 79}]}

``events`` is append-only: an event set hands out the events appended after it was
created that it has not returned yet, at most one per ``nvmlEventSetWait_v2`` call (like
NVML). Names, return shapes and
error classes follow the real library; only what the agent calls is here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

NVML_TEMPERATURE_GPU = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_TIMEOUT = 10
nvmlEventTypeSingleBitEccError = 0x1
nvmlEventTypeDoubleBitEccError = 0x2
nvmlEventTypeXidCriticalError = 0x8

GIB = 2**30
calls: dict[str, int] = {"init": 0, "shutdown": 0, "event_sets": 0, "freed": 0}


class NVMLError(Exception):
    """pynvml's base error; ``value`` is NVML's return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {NVML_ERROR_NOT_SUPPORTED: "Not Supported", NVML_ERROR_TIMEOUT: "Timeout"}.get(
            self.value, "Unknown Error"
        )


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


class NVMLError_Timeout(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_TIMEOUT)


def _state() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(os.environ["SAGE_FAKE_NVML"]).read_text())
    return data


def _gpu(handle: int) -> dict[str, Any]:
    gpu: dict[str, Any] = _state()["gpus"][handle]
    return gpu


def _supported(gpu: dict[str, Any], key: str) -> Any:
    if key not in gpu or gpu[key] is None:
        raise NVMLError_NotSupported()
    return gpu[key]


def nvmlInit() -> None:
    calls["init"] += 1


def nvmlShutdown() -> None:
    calls["shutdown"] += 1


def nvmlDeviceGetCount() -> int:
    return len(_state()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return index


def nvmlDeviceGetIndex(handle: int) -> int:
    return handle


def nvmlDeviceGetName(handle: int) -> str:
    return str(_gpu(handle).get("name", "Fake NVIDIA H100 80GB HBM3"))


def nvmlDeviceGetUUID(handle: int) -> str:
    return str(_gpu(handle).get("uuid", f"GPU-fake-{handle}"))


def nvmlDeviceGetMemoryInfo(handle: int, version: object = None) -> SimpleNamespace:
    gpu = _gpu(handle)
    total = int(gpu.get("total_gib", 80) * GIB)
    free = int(gpu.get("free_gib", 80) * GIB)
    return SimpleNamespace(total=total, free=free, used=total - free)


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=0, memory=0)


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    return 40


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return 100_000


def nvmlDeviceGetEnforcedPowerLimit(handle: int) -> int:
    return 700_000


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    return []


def nvmlDeviceGetTotalEccErrors(handle: int, error_type: int, counter_type: int) -> int:
    assert (error_type, counter_type) == (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC)
    return int(_supported(_gpu(handle), "ecc_uncorrected"))


def nvmlDeviceGetRemappedRows(handle: int) -> tuple[int, int, int, int]:
    gpu = _gpu(handle)
    pending = int(_supported(gpu, "remap_pending"))
    return (0, 0, pending, int(gpu.get("remap_failure", 0)))


def nvmlDeviceGetRetiredPagesPendingStatus(handle: int) -> int:
    pending = _supported(_gpu(handle), "retired_pending")
    return NVML_FEATURE_ENABLED if pending else NVML_FEATURE_DISABLED


class _EventSet:
    def __init__(self) -> None:
        self.masks: dict[int, int] = {}
        # Like NVML, a new set sees only events that happen after it was created.
        self.returned = len(_state().get("events", []))


def nvmlEventSetCreate() -> _EventSet:
    calls["event_sets"] += 1
    return _EventSet()


def nvmlDeviceGetSupportedEventTypes(handle: int) -> int:
    return (
        nvmlEventTypeSingleBitEccError
        | nvmlEventTypeDoubleBitEccError
        | (nvmlEventTypeXidCriticalError)
    )


def nvmlDeviceRegisterEvents(handle: int, event_types: int, event_set: _EventSet) -> None:
    event_set.masks[handle] = event_types


def nvmlEventSetWait_v2(event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        events = _state().get("events", [])
        while event_set.returned < len(events):
            event = events[event_set.returned]
            event_set.returned += 1
            kind = (
                nvmlEventTypeXidCriticalError if "xid" in event else nvmlEventTypeDoubleBitEccError
            )
            if event_set.masks.get(event["index"], 0) & kind:
                return SimpleNamespace(
                    device=event["index"],
                    eventType=kind,
                    eventData=event.get("xid", 0),
                    gpuInstanceId=0xFFFFFFFF,
                    computeInstanceId=0xFFFFFFFF,
                )
        if time.monotonic() >= deadline:
            raise NVMLError_Timeout()
        time.sleep(0.02)


def nvmlEventSetFree(event_set: _EventSet) -> None:
    calls["freed"] += 1
