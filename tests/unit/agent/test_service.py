"""Agent reconciliation from the state file, with fake processes and a mocked engine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sage.unified.agent.launcher import ProcessRecord
from sage.unified.agent.runtimes import LaunchPlan
from sage.unified.agent.service import STOPPED_KEEP_S, Agent, engine_id_for
from sage.unified.agent.settings import AgentSettings
from sage.unified.agent.statefile import AgentState, EngineRecord, StateFile
from sage.unified.sdk.models import EngineSpec, GpuInfo, Runtime
from sage.unified.sdk.states import EngineState

pytestmark = pytest.mark.anyio

SPEC = EngineSpec(model="sim-a", runtime=Runtime.SIMULATED)


@dataclass(frozen=True)
class Record:
    pid: int
    create_time: float
    pgid: int


class FakeProcess:
    def __init__(self, pid: int, create_time: float = 5.0) -> None:
        self.record = Record(pid, create_time, pid)
        self._code: int | None = None
        self._done = anyio.Event()
        self.terminated = False

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
        self.terminated = True
        self._code = -15
        self._done.set()


class NoGpus:
    async def read(self) -> tuple[list[GpuInfo], str | None]:
        return [], "no NVML"

    async def aclose(self) -> None:
        pass


def healthy_engine(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/health":
        return httpx.Response(200)
    if request.url.path == "/v1/models":
        return httpx.Response(
            200, json={"object": "list", "data": [{"id": "sim-a", "object": "model"}]}
        )
    if request.url.path == "/metrics":
        return httpx.Response(
            200, text="vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
        )
    return httpx.Response(404)


def _record(
    engine_id: str, port: int, state: EngineState, pid: int | None, **kw: Any
) -> EngineRecord:
    return EngineRecord(
        engine_id=engine_id,
        spec=SPEC,
        port=port,
        state=state,
        pid=pid,
        pid_create_time=5.0 if pid else None,
        pgid=pid,
        incarnation=kw.pop("incarnation", 0),
        **kw,
    )


def test_engine_ids() -> None:
    engine_id = engine_id_for("Qwen/Qwen2.5-0.5B-Instruct")
    assert engine_id.startswith("qwen2-5-0-5b-instruct-")
    assert len(engine_id.rsplit("-", 1)[1]) == 6
    assert engine_id_for("Qwen/Qwen2.5-0.5B") != engine_id_for("Qwen/Qwen2.5-0.5B")
    assert engine_id_for("___").startswith("engine-")


async def test_reconcile_adopts_live_restarts_dead_and_prunes_old(tmp_path: Path) -> None:
    settings = AgentSettings(
        sage_home=tmp_path,
        coordinator_url=None,
        engine_port_range=(39800, 39810),
        probe_interval_s=0.05,
        restart_backoff_initial_s=0.01,
        restart_backoff_max_s=0.01,
    )
    wall = time.time()
    StateFile.in_dir(settings.state_dir).write(
        AgentState(
            agent_id="a",
            engines=[
                _record("live-000001", 39801, EngineState.READY, 4001, incarnation=3),
                _record("dead-000002", 39802, EngineState.READY, 4002),
                _record("gone-000003", 39803, EngineState.DRAINING, 4003),
                _record("done-000004", 39804, EngineState.STOPPED, None, state_changed_at=wall - 5),
                _record(
                    "old-000005",
                    39805,
                    EngineState.STOPPED,
                    None,
                    state_changed_at=wall - STOPPED_KEEP_S - 1,
                ),
            ],
        )
    )
    alive = {4001: FakeProcess(4001)}
    adopted: list[int] = []
    launched: list[LaunchPlan] = []

    def adopt(record: ProcessRecord) -> FakeProcess | None:
        adopted.append(record.pid)
        return alive.get(record.pid)

    async def launch(plan: LaunchPlan, log_path: Path, cwd: Path) -> FakeProcess:
        launched.append(plan)
        return FakeProcess(5000 + len(launched))

    agent = Agent(
        settings,
        gpu_reader=NoGpus(),
        http_transport=httpx.MockTransport(healthy_engine),
        launch_process=launch,
        adopt_process=adopt,
    )
    with anyio.fail_after(10):
        async with agent:
            # Adopted, and READY after one probe, before the agent calls itself ready.
            assert agent.ready
            live = agent.engine("live-000001")
            assert live.state is EngineState.READY, live.reason
            assert live.pid == 4001
            assert live.incarnation == 3
            assert sorted(adopted) == [4001, 4002, 4003]  # STOPPED ones are not looked for
            # The dead one is restarted on its old port with the next incarnation.
            while agent.engine("dead-000002").state is not EngineState.READY:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            dead = agent.engine("dead-000002")
            assert dead.incarnation == 1
            assert dead.port == 39802
            assert [p.argv[p.argv.index("--port") + 1] for p in launched] == ["39802"]
            # A drain interrupted by the restart is finished, not restarted.
            assert agent.engine("gone-000003").state is EngineState.STOPPED
            assert agent.engine("done-000004").state is EngineState.STOPPED
            assert "old-000005" not in {e.id for e in agent.engines()}
            # Ports of running engines stay booked: a new engine gets another one.
            fresh = await agent.start_engine(EngineSpec(model="sim-a", runtime=Runtime.SIMULATED))
            assert fresh.port not in {39801, 39802}
            # Leaving does not stop engines (a successor adopts them).
        assert not alive[4001].terminated
    saved = StateFile.in_dir(settings.state_dir).load()
    by_id = {e.engine_id: e for e in saved.engines}
    assert by_id["live-000001"].pid == 4001
    assert by_id["dead-000002"].pid == 5001
    assert by_id["dead-000002"].incarnation == 1
