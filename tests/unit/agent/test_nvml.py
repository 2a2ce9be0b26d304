"""GpuReader against a fake ``pynvml`` (same function names, return shapes and error
class structure as nvidia-ml-py 13) and against the real library on this host."""

from __future__ import annotations

import threading
import time
from types import ModuleType, SimpleNamespace
from typing import Any

import anyio
import pytest

from sage.unified.agent.telemetry.nvml import INIT_RETRY_S, GpuReader
from sage.unified.sdk.models import GpuInfo, GpuProcess

pytestmark = pytest.mark.anyio

GIB = 2**30


def fake_pynvml(devices: list[dict[str, Any]]) -> ModuleType:
    """A module object shaped like ``pynvml``; ``devices[i]`` maps a field to a value or
    to an exception class to raise."""
    nvml = ModuleType("pynvml")

    class NVMLError(Exception):
        # Real pynvml: NVMLError(value) maps to the subclass for that code.
        _valClassMapping: dict[int, type[NVMLError]] = {}
        _strings = {
            3: "Not Supported",
            9: "Driver Not Loaded",
            12: "NVML Shared Library Not Found",
            13: "Function Not Found",
            1: "Uninitialized",
        }

        def __new__(cls, value: int) -> NVMLError:
            if cls is NVMLError:
                cls = NVMLError._valClassMapping.get(value, cls)
            obj = Exception.__new__(cls)
            obj.value = value  # type: ignore[attr-defined]
            return obj

        def __str__(self) -> str:
            return self._strings.get(self.value, "Unknown Error")  # type: ignore[attr-defined]

    nvml.NVMLError = NVMLError  # type: ignore[attr-defined]
    for code, name in [
        (1, "Uninitialized"),
        (3, "NotSupported"),
        (4, "NoPermission"),
        (9, "DriverNotLoaded"),
        (12, "LibraryNotFound"),
        (13, "FunctionNotFound"),
    ]:
        cls = type(
            f"NVMLError_{name}",
            (NVMLError,),
            {"__new__": (lambda v: lambda typ, *a: NVMLError.__new__(typ, v))(code)},
        )
        NVMLError._valClassMapping[code] = cls
        setattr(nvml, f"NVMLError_{name}", cls)
    nvml.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    calls: dict[str, int] = {"init": 0, "shutdown": 0}
    nvml.calls = calls  # type: ignore[attr-defined]
    nvml.init_error = None  # type: ignore[attr-defined]

    def nvmlInit() -> None:
        calls["init"] += 1
        if nvml.init_error is not None:  # type: ignore[attr-defined]
            raise nvml.init_error  # type: ignore[attr-defined]

    def nvmlShutdown() -> None:
        calls["shutdown"] += 1

    def get(field: str) -> Any:
        def fn(handle: int, *args: Any) -> Any:
            value = devices[handle][field]
            if isinstance(value, type) and issubclass(value, BaseException):
                raise value()
            return value

        return fn

    nvml.nvmlInit = nvmlInit  # type: ignore[attr-defined]
    nvml.nvmlShutdown = nvmlShutdown  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    for fn_name, field in [
        ("nvmlDeviceGetName", "name"),
        ("nvmlDeviceGetUUID", "uuid"),
        ("nvmlDeviceGetMemoryInfo", "memory"),
        ("nvmlDeviceGetUtilizationRates", "util"),
        ("nvmlDeviceGetTemperature", "temp"),
        ("nvmlDeviceGetPowerUsage", "power"),
        ("nvmlDeviceGetEnforcedPowerLimit", "limit"),
        ("nvmlDeviceGetComputeRunningProcesses", "procs"),
    ]:
        setattr(nvml, fn_name, get(field))
    return nvml


def device(i: int, **overrides: Any) -> dict[str, Any]:
    base = {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
        "memory": SimpleNamespace(total=80 * GIB, used=10 * GIB, free=70 * GIB),
        "util": SimpleNamespace(gpu=42, memory=17),
        "temp": 51,
        "power": 123456,
        "limit": 700000,
        "procs": [
            SimpleNamespace(pid=1000 + i, usedGpuMemory=9 * GIB),
            SimpleNamespace(pid=2000, usedGpuMemory=None),
        ],
    }
    base.update(overrides)
    return base


async def test_two_gpus_fully_read() -> None:
    nvml = fake_pynvml([device(0), device(1)])
    reader = GpuReader(nvml)
    gpus, error = await reader.read()
    assert error is None
    assert gpus[1] == GpuInfo(
        index=1,
        uuid="GPU-00000001-aaaa-bbbb-cccc-dddddddddddd",
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 * GIB,
        memory_used_bytes=10 * GIB,
        memory_free_bytes=70 * GIB,
        utilization_percent=42.0,
        memory_utilization_percent=17.0,
        temperature_c=51.0,
        power_w=123.456,
        power_limit_w=700.0,
        processes=[
            GpuProcess(pid=1001, used_memory_bytes=9 * GIB),
            GpuProcess(pid=2000, used_memory_bytes=None),
        ],
    )
    assert [g.index for g in gpus] == [0, 1]
    await reader.read()
    assert nvml.calls["init"] == 1  # type: ignore[attr-defined]
    await reader.aclose()
    assert nvml.calls["shutdown"] == 1  # type: ignore[attr-defined]


async def test_memory_v2_matches_nvidia_smi_and_v1_is_the_fallback() -> None:
    # Figures an idle H100 80GB HBM3 gave (driver 580.159.04, nvidia-ml-py 13.610):
    # nvidia-smi said 0 MiB used of 81559; NVML v1 said 480 MiB used (the driver's
    # reserved memory counted in); v2 reports the reserve apart.
    total, free, reserved = 85520809984, 85017493504, 503316480
    v2 = SimpleNamespace(total=total, reserved=reserved, free=free, used=0)
    nvml = fake_pynvml([device(0, memory=v2)])
    nvml.nvmlMemory_v2 = 0x2000028  # type: ignore[attr-defined]
    seen_versions: list[tuple[Any, ...]] = []
    read_memory = nvml.nvmlDeviceGetMemoryInfo  # type: ignore[attr-defined]

    def memory_info(handle: int, *version: Any) -> Any:
        seen_versions.append(version)
        return read_memory(handle)

    nvml.nvmlDeviceGetMemoryInfo = memory_info  # type: ignore[attr-defined]
    gpus, _ = await GpuReader(nvml).read()
    assert seen_versions == [(0x2000028,)]
    assert (gpus[0].memory_used_bytes, gpus[0].memory_reserved_bytes) == (0, reserved)
    assert (gpus[0].memory_total_bytes, gpus[0].memory_free_bytes) == (total, free)

    # A driver that refuses v2: the v1 figures, reserve unknown.
    def v1_only(handle: int, *version: Any) -> Any:
        if version:
            raise nvml.NVMLError_FunctionNotFound()  # type: ignore[attr-defined]
        return SimpleNamespace(total=total, used=total - free, free=free)

    nvml.nvmlDeviceGetMemoryInfo = v1_only  # type: ignore[attr-defined]
    gpus, _ = await GpuReader(nvml).read()
    assert (gpus[0].memory_used_bytes, gpus[0].memory_reserved_bytes) == (reserved, None)


async def test_unsupported_field_is_none_rest_still_read() -> None:
    devices = [device(0), device(1, name=b"Tesla T4")]
    nvml = fake_pynvml(devices)
    devices[0]["power"] = devices[0]["limit"] = nvml.NVMLError_NotSupported  # type: ignore[attr-defined]
    # Old drivers lack the _v3 symbol nvmlDeviceGetComputeRunningProcesses calls.
    devices[1]["procs"] = nvml.NVMLError_FunctionNotFound  # type: ignore[attr-defined]
    gpus, error = await GpuReader(nvml).read()
    assert error is None
    assert (gpus[0].power_w, gpus[0].power_limit_w) == (None, None)
    assert gpus[0].memory_free_bytes == 70 * GIB
    assert gpus[0].temperature_c == 51.0
    assert gpus[1].processes == []
    assert gpus[1].name == "Tesla T4"
    assert gpus[1].power_w == 123.456


async def test_library_missing_reports_reason_and_retries_later() -> None:
    nvml = fake_pynvml([device(0)])
    nvml.init_error = nvml.NVMLError(12)  # type: ignore[attr-defined]
    assert type(nvml.init_error) is nvml.NVMLError_LibraryNotFound  # type: ignore[attr-defined]
    now = [1000.0]
    reader = GpuReader(nvml, monotonic=lambda: now[0])
    assert await reader.read() == ([], "NVML unavailable: NVML Shared Library Not Found")
    now[0] += INIT_RETRY_S / 2
    assert await reader.read() == ([], "NVML unavailable: NVML Shared Library Not Found")
    assert nvml.calls["init"] == 1  # type: ignore[attr-defined]
    nvml.init_error = None  # type: ignore[attr-defined]
    now[0] += INIT_RETRY_S
    gpus, error = await reader.read()
    assert error is None
    assert len(gpus) == 1
    assert nvml.calls["init"] == 2  # type: ignore[attr-defined]


async def test_driver_not_loaded_and_no_shutdown_without_init() -> None:
    nvml = fake_pynvml([])
    nvml.init_error = nvml.NVMLError_DriverNotLoaded()  # type: ignore[attr-defined]
    reader = GpuReader(nvml)
    assert await reader.read() == ([], "NVML unavailable: Driver Not Loaded")
    await reader.aclose()
    assert nvml.calls["shutdown"] == 0  # type: ignore[attr-defined]


async def test_unexpected_exception_never_raises() -> None:
    nvml = fake_pynvml([device(0)])

    def broken() -> int:
        raise RuntimeError("driver wedged")

    nvml.nvmlDeviceGetCount = broken  # type: ignore[attr-defined]
    gpus, error = await GpuReader(nvml).read()
    assert gpus == []
    assert error is not None
    assert "driver wedged" in error


async def test_reads_are_serialised() -> None:
    nvml = fake_pynvml([device(0)])
    active = [0, 0]  # current, maximum
    lock = threading.Lock()

    def slow_count() -> int:
        with lock:
            active[0] += 1
            active[1] = max(active)
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return 1

    nvml.nvmlDeviceGetCount = slow_count  # type: ignore[attr-defined]
    reader = GpuReader(nvml)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(reader.read)
    assert active[1] == 1


async def test_real_pynvml_on_this_host() -> None:
    reader = GpuReader()
    try:
        gpus, error = await reader.read()
    finally:
        await reader.aclose()
    if error is None:  # a GPU host: every GPU has at least its index and memory
        assert gpus
        assert all(g.memory_total_bytes for g in gpus)
    else:
        assert gpus == []
        assert error.startswith("NVML unavailable: ")
