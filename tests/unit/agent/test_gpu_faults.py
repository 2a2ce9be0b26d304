"""GPU fault quarantine: the pure rules, the NVML watcher against a fake ``pynvml`` at the
library boundary (tests/fake_nvml/pynvml.py, also used by the integration tests), and
the agent's reaction (drain, no restart on the GPU, placement, clear, persistence)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.quarantine import (
    FaultCounters,
    GpuHealthRecord,
    GpuQuarantine,
    counter_fault,
    xid_fault,
)
from sage.unified.agent.runtimes import LaunchPlan
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.statefile import AgentState
from sage.unified.agent.telemetry import GpuFaultWatcher, GpuReader
from sage.unified.agent.telemetry.gpu_faults import GpuFaultEvent
from sage.unified.sdk.models import GpuInfo
from sage.unified.sdk.states import EngineState

pytestmark = pytest.mark.anyio

FAKE_NVML = Path(__file__).resolve().parents[2] / "fake_nvml" / "pynvml.py"


# ---- the pure rules ------------------------------------------------------------------


def test_which_xids_are_faults() -> None:
    assert xid_fault(79) == "XID 79: GPU has fallen off the bus"
    for xid in (48, 63, 64, 74, 92, 94, 95):
        assert xid_fault(xid) is not None
    for application_error in (13, 31, 43, 45, 68, 109):
        assert xid_fault(application_error) is None
    assert xid_fault(79, critical={48}) is None
    assert xid_fault(119, critical={119}) == "XID 119: critical XID"


@pytest.mark.parametrize(
    ("counters", "reason"),
    [
        (FaultCounters(uncorrected_ecc=2), "2 uncorrected ECC errors since the last GPU reset"),
        (FaultCounters(remap_pending=True), "row remapping pending (reset the GPU to apply it)"),
        (FaultCounters(remap_failed=True), "row remapping failed (no spare memory rows left)"),
        (
            FaultCounters(retired_pages_pending=True),
            "page retirement pending (reset the GPU to apply it)",
        ),
        (FaultCounters(uncorrected_ecc=0, remap_pending=False, remap_failed=False), None),
        (FaultCounters(), None),  # nothing supported on this board
    ],
)
def test_each_counter_kind(counters: FaultCounters, reason: str | None) -> None:
    assert counter_fault(counters) == reason


def test_a_clear_acknowledges_the_counters_until_they_get_worse() -> None:
    quarantine = GpuQuarantine()
    bad = FaultCounters(uncorrected_ecc=2, remap_pending=True)
    assert quarantine.observe_counters(1, bad, now=10.0, uuid="GPU-1") is not None
    assert quarantine.observe_counters(1, bad, now=11.0) is None  # already quarantined
    assert quarantine.quarantined() == {
        1: "2 uncorrected ECC errors since the last GPU reset; row remapping pending (reset "
        "the GPU to apply it)"
    }
    assert quarantine.clear(1, bad)
    assert not quarantine.clear(1, bad)
    assert quarantine.observe_counters(1, bad, now=12.0) is None  # acknowledged
    worse = FaultCounters(uncorrected_ecc=3, remap_pending=True)
    assert quarantine.observe_counters(1, worse, now=13.0) == (
        "3 uncorrected ECC errors since the last GPU reset"
    )
    quarantine.clear(1, worse)
    # A GPU reset zeroes the counters; the next errors count again from there.
    assert quarantine.observe_counters(1, FaultCounters(uncorrected_ecc=0), now=14.0) is None
    assert quarantine.observe_counters(1, FaultCounters(uncorrected_ecc=1), now=15.0) is not None


def test_records_survive_the_state_file_and_annotate_gpus() -> None:
    quarantine = GpuQuarantine()
    assert quarantine.quarantine(0, "XID 79: GPU has fallen off the bus", now=5.0, uuid="GPU-0")
    assert not quarantine.quarantine(0, "XID 48: double-bit ECC error", now=6.0)
    data = msgspec.json.encode(AgentState(gpu_health=quarantine.records()))
    restored = GpuQuarantine(msgspec.json.decode(data, type=AgentState).gpu_health)
    assert restored.records() == [
        GpuHealthRecord(
            index=0, uuid="GPU-0", fault="XID 79: GPU has fallen off the bus", since=5.0
        )
    ]
    gpus = restored.annotate([GpuInfo(index=0), GpuInfo(index=1)])
    assert [(g.healthy, g.fault) for g in gpus] == [
        (False, "XID 79: GPU has fallen off the bus"),
        (True, None),
    ]
    # An older state file (no gpu_health) still loads.
    assert msgspec.json.decode(b'{"version": 1, "engines": []}', type=AgentState).gpu_health == []


# ---- the NVML watcher against the fake library ------------------------------------------


@dataclass
class FakeNvml:
    module: ModuleType
    path: Path

    def write(self, gpus: list[dict[str, Any]], events: list[dict[str, int]] | None = None) -> None:
        self.path.write_text(json.dumps({"gpus": gpus, "events": events or []}))

    def change(self, index: int, **fields: Any) -> None:
        data = json.loads(self.path.read_text())
        data["gpus"][index].update(fields)
        self.path.write_text(json.dumps(data))

    def inject(self, index: int, xid: int | None = None) -> None:
        data = json.loads(self.path.read_text())
        data["events"].append({"index": index} if xid is None else {"index": index, "xid": xid})
        self.path.write_text(json.dumps(data))


def gpu(index: int, free_gib: float = 70, **fields: Any) -> dict[str, Any]:
    return {
        "uuid": f"GPU-{index}",
        "free_gib": free_gib,
        "ecc_uncorrected": 0,
        "remap_pending": 0,
        "remap_failure": 0,
        "retired_pending": 0,
        **fields,
    }


@pytest.fixture
def nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    path = tmp_path / "nvml.json"
    monkeypatch.setenv("SAGE_FAKE_NVML", str(path))
    spec = importlib.util.spec_from_file_location("fake_pynvml", FAKE_NVML)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake = FakeNvml(module, path)
    fake.write([gpu(0), gpu(1)])
    return fake


async def test_counters_of_each_fault_kind(nvml: FakeNvml) -> None:
    nvml.write(
        [
            gpu(0, ecc_uncorrected=4),
            gpu(1, remap_pending=1),
            gpu(2, remap_failure=1),
            gpu(3, remap_pending=None, retired_pending=1),  # pre-Ampere: no row remapper
            gpu(4, ecc_uncorrected=None, remap_pending=None, retired_pending=None),
        ]
    )
    watcher = GpuFaultWatcher(nvml.module)
    counters = await watcher.read_counters()
    assert counters == {
        0: FaultCounters(
            uncorrected_ecc=4, remap_pending=False, remap_failed=False, retired_pages_pending=False
        ),
        1: FaultCounters(
            uncorrected_ecc=0, remap_pending=True, remap_failed=False, retired_pages_pending=False
        ),
        2: FaultCounters(
            uncorrected_ecc=0, remap_pending=False, remap_failed=True, retired_pages_pending=False
        ),
        3: FaultCounters(uncorrected_ecc=0, retired_pages_pending=True),
        4: FaultCounters(),
    }
    assert [counter_fault(c) is not None for c in counters.values()] == [
        True,
        True,
        True,
        True,
        False,
    ]
    await watcher.aclose()
    assert nvml.module.calls["shutdown"] == 1


async def test_events_reach_the_loop_and_the_watch_stops_within_a_wait(nvml: FakeNvml) -> None:
    watcher = GpuFaultWatcher(nvml.module)
    seen: list[GpuFaultEvent] = []
    got_two = anyio.Event()

    def on_event(event: GpuFaultEvent) -> None:
        seen.append(event)
        if len(seen) == 2:
            got_two.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.watch, on_event)
            await _until(lambda: nvml.module.calls["event_sets"] == 1)  # registered
            nvml.inject(1, xid=79)
            nvml.inject(0)  # a double-bit ECC error event
            await got_two.wait()
            tg.cancel_scope.cancel()
        await watcher.aclose()
    assert seen == [GpuFaultEvent(index=1, xid=79), GpuFaultEvent(index=0, xid=None)]
    assert nvml.module.calls["event_sets"] == 1
    assert nvml.module.calls["freed"] == 1


async def test_without_nvml_there_are_no_counters() -> None:
    broken = ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def refuse() -> None:
        raise NVMLError("Driver Not Loaded")

    broken.NVMLError = NVMLError  # type: ignore[attr-defined]
    broken.nvmlInit = refuse  # type: ignore[attr-defined]
    watcher = GpuFaultWatcher(broken)
    assert await watcher.read_counters() == {}
    await watcher.aclose()


# ---- the agent's reaction ----------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    pid: int
    create_time: float
    pgid: int


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.record = Record(pid, 1.0, pid)
        self._code: int | None = None
        self._done = anyio.Event()

    @property
    def returncode(self) -> int | None:
        return self._code

    def is_alive(self) -> bool:
        return self._code is None

    async def wait(self) -> int:
        await self._done.wait()
        return self._code or 0

    def exit(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._done.set()

    def refresh_tree(self) -> None:
        pass

    def status(self) -> str | None:
        return "sleeping" if self._code is None else None

    async def terminate(self, grace_s: float) -> None:
        self.exit(-15)


class Launches:
    def __init__(self) -> None:
        self.plans: list[LaunchPlan] = []
        self.processes: list[FakeProcess] = []

    async def __call__(self, plan: LaunchPlan, log_path: Path, cwd: Path) -> FakeProcess:
        self.plans.append(plan)
        self.processes.append(FakeProcess(60_000 + len(self.plans)))
        return self.processes[-1]

    def gpus_of(self, n: int) -> str:
        return self.plans[n].env.get("CUDA_VISIBLE_DEVICES", "")


@dataclass
class Rig:
    agent: Agent
    client: httpx.AsyncClient
    launches: Launches


@contextlib.asynccontextmanager
async def _rig(tmp_path: Path, nvml: FakeNvml) -> AsyncIterator[Rig]:
    settings = AgentSettings(
        sage_home=tmp_path,
        coordinator_url=None,
        agent_id="gpu-host",
        engine_port_range=(39760, 39769),
        model_allowlist=["Qwen/*"],
        heartbeat_interval_s=0.1,
        probe_interval_s=0.1,
        probe_timeout_s=0.1,
        restart_backoff_initial_s=0.05,
        restart_backoff_max_s=0.05,
        stop_grace_s=0.1,
    )
    launches = Launches()
    agent = Agent(
        settings,
        gpu_reader=GpuReader(nvml.module),
        fault_watcher=GpuFaultWatcher(nvml.module),
        launch_process=launches,
    )
    async with agent:
        app = create_agent_app(agent)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.lifespan(),
            httpx.AsyncClient(transport=transport, base_url="http://agent.localhost") as client,
        ):
            yield Rig(agent, client, launches)


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (the agent offers no event for these conditions)."""
    with anyio.fail_after(10):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_a_fault_drains_the_gpu_keeps_placement_off_it_until_cleared(
    tmp_path: Path, nvml: FakeNvml
) -> None:
    nvml.write([gpu(0, free_gib=70), gpu(1, free_gib=40)])
    vllm = {"model": "Qwen/Qwen2.5-0.5B", "runtime": "vllm"}
    async with _rig(tmp_path, nvml) as rig:
        first = (await rig.client.post("/v1/engines", json=vllm)).json()
        assert first["gpu_ids"] == [0]  # the most free memory
        await _until(lambda: nvml.module.calls["event_sets"] == 1)
        nvml.inject(0, xid=79)
        await _until(lambda: rig.agent.engine(first["id"]).state is EngineState.STOPPED)
        stopped = rig.agent.engine(first["id"])
        assert "GPU 0 is quarantined: XID 79: GPU has fallen off the bus" in stopped.reason
        listed = (await rig.client.get("/v1/gpus")).json()["gpus"]
        assert [(g["index"], g["healthy"], g["fault"]) for g in listed] == [
            (0, False, "XID 79: GPU has fallen off the bus"),
            (1, True, None),
        ]
        metrics = (await rig.client.get("/metrics")).text
        assert 'sage_agent_gpu_quarantined{gpu="0"} 1.0' in metrics
        # Placement avoids it although it has the most free memory; asking for it says why.
        second = (await rig.client.post("/v1/engines", json=vllm)).json()
        assert second["gpu_ids"] == [1]
        named = await rig.client.post("/v1/engines", json={**vllm, "gpu_ids": [0]})
        assert named.status_code == 409
        assert "GPU 0 is quarantined (XID 79" in named.json()["error"]["message"]

        # A counter turning bad quarantines the GPU as well and drains its engine.
        nvml.change(1, ecc_uncorrected=3)
        await _until(lambda: rig.agent.gpu_health.fault(1) is not None)
        await _until(lambda: rig.agent.engine(second["id"]).state is EngineState.STOPPED)
        third = await rig.client.post("/v1/engines", json=vllm)
        assert third.status_code == 409
        assert "3 uncorrected ECC errors" in third.json()["error"]["message"]

        cleared = await rig.client.post("/v1/gpus/0/clear")
        assert cleared.status_code == 200, cleared.text
        assert (cleared.json()["index"], cleared.json()["healthy"]) == (0, True)
        again = await rig.client.post("/v1/engines", json={**vllm, "gpu_ids": [0]})
        assert again.status_code == 201, again.text
        missing = await rig.client.post("/v1/gpus/7/clear")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "gpu_not_found"

    # The quarantine of GPU 1 survives an agent restart; its acknowledged counters too.
    async with _rig(tmp_path, nvml) as rig:
        assert rig.agent.gpu_health.quarantined() == {
            1: "3 uncorrected ECC errors since the last GPU reset"
        }
        listed = (await rig.client.get("/v1/gpus")).json()["gpus"]
        assert [g["healthy"] for g in listed] == [True, False]


async def test_an_engine_that_failed_is_held_until_its_gpu_is_cleared(
    tmp_path: Path, nvml: FakeNvml
) -> None:
    nvml.write([gpu(0)])
    async with _rig(tmp_path, nvml) as rig:
        engine = (
            await rig.client.post("/v1/engines", json={"model": "Qwen/q", "runtime": "vllm"})
        ).json()
        # The GPU falls off the bus: the engine dies first, then the XID arrives.
        rig.launches.processes[0].exit(-6)
        await _until(lambda: rig.agent.engine(engine["id"]).state is EngineState.ERROR)
        await _until(lambda: nvml.module.calls["event_sets"] == 1)
        nvml.inject(0, xid=79)
        await _until(lambda: "not restarted: GPU 0" in rig.agent.engine(engine["id"]).reason)
        await anyio.sleep(0.5)  # several backoffs: still no relaunch
        info = rig.agent.engine(engine["id"])
        assert (info.state, info.incarnation, len(rig.launches.plans)) == (EngineState.ERROR, 0, 1)
        assert "sage llm gpu clear gpu-host:0" in info.reason
        assert (await rig.client.post("/v1/gpus/0/clear")).status_code == 200
        await _until(lambda: len(rig.launches.plans) == 2)
        assert rig.agent.engine(engine["id"]).incarnation == 1
        assert rig.launches.gpus_of(1) == "0"
