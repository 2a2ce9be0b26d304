"""The agent HTTP API in-process (httpx.ASGITransport), on asyncio and trio.

Processes are faked (a launcher that records plans); everything else is the real
Agent: allowlist, port allocator, GPU assignment, state file, error mapping.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.runtimes import LaunchPlan
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.statefile import StateFile
from sage.unified.sdk.models import GpuInfo

pytestmark = pytest.mark.anyio

TOKEN = "agent-secret"


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

    def refresh_tree(self) -> None:
        pass

    def status(self) -> str | None:
        return "sleeping" if self.returncode is None else None

    async def terminate(self, grace_s: float) -> None:
        self._code = -15
        self._done.set()


class FakeGpus:
    def __init__(self, gpus: list[GpuInfo], error: str | None) -> None:
        self.gpus, self.error = gpus, error

    async def read(self) -> tuple[list[GpuInfo], str | None]:
        return self.gpus, self.error

    async def aclose(self) -> None:
        pass


class Launches:
    def __init__(self) -> None:
        self.plans: list[LaunchPlan] = []

    async def __call__(self, plan: LaunchPlan, log_path: Path, cwd: Path) -> FakeProcess:
        self.plans.append(plan)
        await anyio.Path(log_path.parent).mkdir(parents=True, exist_ok=True)
        await anyio.Path(log_path).write_text("line one\nline two\nline three\n")
        return FakeProcess(50_000 + len(self.plans))


def _settings(tmp_path: Path, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "sage_home": tmp_path,
        "coordinator_url": None,
        "engine_port_range": (39750, 39759),
        "model_allowlist": ["Qwen/*", "sim-*"],
        "probe_interval_s": 0.2,
        "probe_timeout_s": 0.2,
        "stop_grace_s": 0.1,
        "agent_id": "test-agent",
        **overrides,
    }
    return AgentSettings(**values)


@dataclass
class Api:
    client: httpx.AsyncClient
    agent: Agent
    launches: Launches


async def _api(settings: AgentSettings, gpus: FakeGpus | None = None) -> AsyncIterator[Api]:
    launches = Launches()
    reader = gpus or FakeGpus([], "NVML library not found")
    async with Agent(settings, gpu_reader=reader, launch_process=launches) as agent:
        app = create_agent_app(agent)
        async with (
            app.lifespan(),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://agent.localhost"
            ) as client,
        ):
            yield Api(client, agent, launches)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for value in _api(_settings(tmp_path)):
        yield value


@pytest.fixture
async def token_api(tmp_path: Path) -> AsyncIterator[Api]:
    async for value in _api(_settings(tmp_path, token=TOKEN)):
        yield value


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


SIM = {"model": "sim-llm", "runtime": "simulated"}


async def test_health_ready_and_empty_lists(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok", "reason": None}
    assert (await api.client.get("/readyz")).status_code == 200
    assert (await api.client.get("/v1/engines")).json() == {"engines": []}
    gpus = (await api.client.get("/v1/gpus")).json()
    assert gpus == {"gpus": [], "error": "NVML library not found"}


async def test_start_list_logs_stop(api: Api) -> None:
    response = await api.client.post(
        "/v1/engines", json={**SIM, "served_model_name": "Qwen2.5-0.5B"}
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["state"] == "STARTING"
    assert re.fullmatch(r"qwen2-5-0-5b-[0-9a-f]{6}", info["id"])
    assert 39750 <= info["port"] <= 39759
    assert info["url"] == f"http://127.0.0.1:{info['port']}"
    assert len(api.launches.plans) == 1
    # The pid is on disk before the API answered (a crash now must not orphan it).
    saved = StateFile.in_dir(api.agent.settings.state_dir).load()
    assert [(e.engine_id, e.pid) for e in saved.engines] == [(info["id"], info["pid"])]

    listed = (await api.client.get("/v1/engines")).json()["engines"]
    assert [e["id"] for e in listed] == [info["id"]]
    assert (await api.client.get(f"/v1/engines/{info['id']}")).json()["model"] == "Qwen2.5-0.5B"
    logs = (await api.client.get(f"/v1/engines/{info['id']}/logs", params={"tail": 2})).json()
    assert logs == {"engine_id": info["id"], "lines": ["line two", "line three"]}

    stopped = await api.client.delete(f"/v1/engines/{info['id']}")
    assert stopped.status_code == 200
    assert stopped.json()["state"] == "STOPPED"
    # The port is free again: an explicit request for it succeeds.
    again = await api.client.post("/v1/engines", json={**SIM, "port": info["port"]})
    assert again.status_code == 201, again.text

    metrics = (await api.client.get("/metrics")).text
    assert 'sage_agent_engines{state="STOPPED"} 1.0' in metrics
    assert 'sage_agent_engines{state="STARTING"} 1.0' in metrics
    assert "sage_agent_engine_restarts_total 0.0" in metrics


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b'{"model": "sim-llm", "runtime": "tensorrt"}', 422, "runtime"),
        (b'{"model": "sim-llm", "runtime": "simulated", "command": "sh"}', 422, "command"),
        (b'{"model": "sim-llm", "runtime": "simulated", "dtype": "int3"}', 422, "dtype"),
        (b'{"model": "../etc", "runtime": "simulated"}', 422, "model"),
        (b'{"model": "evil/model", "runtime": "simulated"}', 403, "not allowed"),
        (b'{"model": "sim-llm", "runtime": "simulated", "port": 80}', 409, "80"),
        (b'{"model": "Qwen/Qwen2.5-0.5B", "runtime": "vllm"}', 409, "GPU"),
    ],
)
async def test_rejected_specs_spawn_nothing(
    api: Api, body: bytes, status: int, needle: str
) -> None:
    response = await api.client.post(
        "/v1/engines", content=body, headers={"Content-Type": "application/json"}
    )
    error = _assert_error(response, status)
    assert needle.lower() in error["message"].lower()
    assert api.launches.plans == []
    assert (await api.client.get("/v1/engines")).json() == {"engines": []}


async def test_model_paths_outside_the_model_roots_are_403(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "tiny").mkdir(parents=True)
    (root / "escape").symlink_to("/")
    settings = _settings(tmp_path, model_allowlist=["*"], model_roots=[root])
    async for api in _api(settings):
        for model in ("/etc/passwd", "/proc/self/environ", f"{root}/escape/etc/passwd"):
            response = await api.client.post("/v1/engines", json={**SIM, "model": model})
            error = _assert_error(response, 403, "model_not_allowed")
            assert str(root) in error["message"]
            assert "model_roots" in error["message"]
        assert api.launches.plans == []
        allowed = await api.client.post(
            "/v1/engines", json={**SIM, "model": f"{root}/tiny", "served_model_name": "tiny"}
        )
        assert allowed.status_code == 201, allowed.text
        assert len(api.launches.plans) == 1


async def test_port_taken_is_409(api: Api) -> None:
    first = await api.client.post("/v1/engines", json={**SIM, "port": 39755})
    assert first.status_code == 201
    second = await api.client.post("/v1/engines", json={**SIM, "port": 39755})
    _assert_error(second, 409, "port_unavailable")
    assert len(api.launches.plans) == 1


async def test_unknown_engine_is_404(api: Api) -> None:
    for response in (
        await api.client.get("/v1/engines/nope-000000"),
        await api.client.delete("/v1/engines/nope-000000"),
        await api.client.post("/v1/engines/nope-000000/drain"),
        await api.client.get("/v1/engines/nope-000000/logs"),
    ):
        _assert_error(response, 404, "engine_not_found")
    _assert_error(await api.client.get("/v1/nothing-here"), 404)


async def test_drain_without_wait_is_202(api: Api) -> None:
    info = (await api.client.post("/v1/engines", json=SIM)).json()
    response = await api.client.post(
        f"/v1/engines/{info['id']}/drain", params={"wait": "false", "timeout_s": 5}
    )
    # Still STARTING (nothing listens on the port): a drain of an engine that never
    # served stops it at once.
    assert response.status_code == 202
    assert response.json()["state"] in {"DRAINING", "STOPPED"}
    with anyio.fail_after(5):
        final = await api.agent.drain_engine(info["id"], wait=True)
    assert final.state.value == "STOPPED"


async def test_token_required_on_mutations(token_api: Api) -> None:
    client = token_api.client
    _assert_error(await client.post("/v1/engines", json=SIM), 401)
    wrong = {"Authorization": "Bearer nope"}
    _assert_error(await client.post("/v1/engines", json=SIM, headers=wrong), 401)
    _assert_error(await client.delete("/v1/engines/x-000000"), 401)
    assert token_api.launches.plans == []
    # Reads are open on a loopback bind.
    assert (await client.get("/v1/engines")).status_code == 200
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/v1/engines", json=SIM, headers=good)).status_code == 201


async def test_non_loopback_bind_requires_token_for_reads(tmp_path: Path) -> None:
    settings = _settings(tmp_path, token=TOKEN, bind_host="0.0.0.0")
    async for api in _api(settings):
        _assert_error(await api.client.get("/v1/engines"), 401)
        _assert_error(await api.client.get("/metrics"), 401)
        assert (await api.client.get("/healthz")).status_code == 200
        assert (await api.client.get("/readyz")).status_code == 200
        ok = await api.client.get("/v1/engines", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


async def test_readyz_reports_unreachable_coordinator(tmp_path: Path) -> None:
    settings = _settings(tmp_path, coordinator_url="http://127.0.0.1:9")
    async for api in _api(settings):
        response = await api.client.get("/readyz")
        error = _assert_error(response, 503, "coordinator_unreachable")
        assert "coordinator not reachable" in error["message"]
        report_failures = (await api.client.get("/metrics")).text
        assert re.search(r"sage_agent_report_failures_total [1-9]", report_failures)


async def test_gpu_inventory_and_metrics(tmp_path: Path) -> None:
    gpu = GpuInfo(index=0, name="H100", memory_total_bytes=80 * 2**30, memory_used_bytes=2**30)
    async for api in _api(_settings(tmp_path), FakeGpus([gpu], None)):
        body = (await api.client.get("/v1/gpus")).json()
        assert msgspec.convert(body["gpus"], list[GpuInfo]) == [gpu]
        assert body["error"] is None
        text = (await api.client.get("/metrics")).text
        assert 'sage_agent_gpu_memory_used_bytes{gpu="0"} 1.073741824e+09' in text
        assert 'sage_agent_gpu_memory_total_bytes{gpu="0"}' in text
        # A GPU engine is placed on the free GPU and holds it exclusively.
        first = await api.client.post(
            "/v1/engines", json={"model": "Qwen/Qwen2.5-0.5B", "runtime": "vllm"}
        )
        assert first.status_code == 201, first.text
        assert first.json()["gpu_ids"] == [0]
        second = await api.client.post(
            "/v1/engines", json={"model": "Qwen/Qwen2.5-0.5B", "runtime": "vllm"}
        )
        _assert_error(second, 409, "no_free_gpu")
