"""The standalone coordinator as a real process (uvicorn on loopback)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sage.unified.sdk.models import AgentReport, EngineInfo, encode
from sage.unified.sdk.states import EngineState

ADMIN = {"authorization": "Bearer admin-t"}
AGENT = {"authorization": "Bearer agent-t", "content-type": "application/json"}


def report_body(
    state: EngineState = EngineState.READY, incarnation: int = 1, engine_id: str = "e1"
) -> bytes:
    return encode(
        AgentReport(
            agent_id="a1",
            host="127.0.0.1",
            url="http://127.0.0.1:8200",
            incarnation=incarnation,
            engines=[
                EngineInfo(
                    id=engine_id,
                    model="m",
                    host="127.0.0.1",
                    port=8900,
                    url="http://127.0.0.1:8900",
                    state=state,
                )
            ],
        )
    )


class Server:
    """Starts/stops ``python -m sage.unified.coordinator`` with a given environment."""

    def __init__(
        self,
        processes: Any,
        wait_http: Callable[..., httpx.Response],
        port: int,
        env: dict[str, str],
    ) -> None:
        self.processes = processes
        self.wait_http = wait_http
        self.port = port
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, **extra: str) -> None:
        env = {**self.env, "SAGE_COORDINATOR_PORT": str(self.port), **extra}
        proc = self.proc = self.processes.python(
            "-m", "sage.unified.coordinator", env=env, name="coordinator"
        )
        try:
            self.wait_http(f"{self.url}/readyz", timeout=30)
        except TimeoutError as exc:
            raise AssertionError(
                f"coordinator did not start (exit {proc.poll()}): {self.processes.log_of(proc)}"
            ) from exc

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=15)


@pytest.fixture
def server(
    processes: Any,
    wait_http: Callable[..., httpx.Response],
    free_tcp_port_factory: Callable[[], int],
    tmp_path: Path,
) -> Iterator[Server]:
    # An empty file of its own keeps the machine's TOML files out (a missing one is refused).
    (tmp_path / "none.toml").write_text("")
    env = {
        "SAGE_COORDINATOR_ADMIN_TOKENS": "admin-t",
        "SAGE_COORDINATOR_AGENT_TOKENS": "agent-t",
        "SAGE_COORDINATOR_DB_PATH": str(tmp_path / "coord.db"),
        "SAGE_COORDINATOR_CONFIG": str(tmp_path / "none.toml"),
        "SAGE_COORDINATOR_LOG_LEVEL": "warning",
    }
    return Server(processes, wait_http, free_tcp_port_factory(), env)


@pytest.mark.anyio
async def test_auth_required(server: Server) -> None:
    server.start()
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        r = await client.get("/v1/management/backends")
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        r = await client.put(
            "/v1/agents/a1",
            content=report_body(),
            headers={"authorization": "Bearer wrong", "content-type": "application/json"},
        )
        assert r.status_code == 401
        r = await client.get("/v1/management/audit", headers=ADMIN)
        assert [e["result"][:8] for e in r.json()["entries"]] == ["rejected", "rejected"]


@pytest.mark.anyio
async def test_long_poll_sees_report_within_100ms(server: Server) -> None:
    server.start()
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        r = await client.put(
            "/v1/agents/a1", content=report_body(EngineState.STARTING), headers=AGENT
        )
        revision = r.json()["revision"]
        delays: list[float] = []
        for attempt in range(3):
            seen: dict[str, Any] = {}

            async def watch(after: int, seen: dict[str, Any] = seen) -> None:
                r = await client.get(
                    f"/v1/management/backends?after={after}&wait=20", headers=ADMIN
                )
                seen["at"] = time.perf_counter()
                seen["table"] = r.json()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, revision)
                await anyio.sleep(0.3)  # the long-poll is parked
                assert "table" not in seen
                state = EngineState.READY if attempt % 2 == 0 else EngineState.STARTING
                sent = time.perf_counter()
                r = await client.put("/v1/agents/a1", content=report_body(state), headers=AGENT)
                assert r.status_code == 200
            revision = seen["table"]["revision"]
            assert revision == r.json()["revision"]
            assert [b["id"] for b in seen["table"]["backends"]] == (
                ["e1"] if state is EngineState.READY else []
            )
            delays.append(seen["at"] - sent)
    assert min(delays) < 0.1, delays
    assert max(delays) < 1.0, delays


@pytest.mark.anyio
async def test_restart_with_populated_db_keeps_agents_and_grants_grace(server: Server) -> None:
    ttl = {
        "SAGE_COORDINATOR_LEASE_TTL_S": "1",
        "SAGE_COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
        "SAGE_COORDINATOR_RESTART_GRACE_S": "1.5",
        "SAGE_COORDINATOR_SWEEP_INTERVAL_S": "0.1",
    }
    server.start(**ttl)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as client:
        r = await client.put("/v1/agents/a1", content=report_body(incarnation=4), headers=AGENT)
        assert r.json()["lease_ttl_s"] == 1.0
        r = await client.post(
            "/v1/management/engines/register",
            json={"model": "m", "url": "http://127.0.0.1:9", "id": "reg1"},
            headers=ADMIN,
        )
        assert r.status_code == 201
        revision_before = (await client.get("/v1/management/backends", headers=ADMIN)).json()[
            "revision"
        ]
        server.stop()
        server.start(**ttl)
        restarted = time.monotonic()
        agents = (await client.get("/v1/management/agents", headers=ADMIN)).json()["agents"]
        assert [(a["agent_id"], a["incarnation"], a["lost"]) for a in agents] == [("a1", 4, False)]
        engines = (await client.get("/v1/management/engines", headers=ADMIN)).json()["engines"]
        assert [e["id"] for e in engines] == [
            "reg1"
        ]  # agent engines come back with its next report
        # The agent it knew has not reported yet: the table is withheld, not published
        # without that agent's engines.
        settling = await client.get("/v1/management/backends", headers=ADMIN)
        assert settling.status_code == 503
        assert settling.json()["error"]["code"] == "coordinator_settling"
        assert settling.headers["retry-after"] == "1"
        # Incarnation fence survives the restart.
        r = await client.put("/v1/agents/a1", content=report_body(incarnation=3), headers=AGENT)
        assert r.status_code == 409
        await anyio.sleep(
            max(0.0, restarted + 1.5 - time.monotonic())
        )  # past TTL, within TTL + grace
        agents = (await client.get("/v1/management/agents", headers=ADMIN)).json()["agents"]
        assert agents[0]["lost"] is False
        # One lease TTL later it publishes again, its revision never behind the old one.
        table = (await client.get("/v1/management/backends", headers=ADMIN)).json()
        assert table["revision"] >= revision_before
        for _ in range(50):
            agents = (await client.get("/v1/management/agents", headers=ADMIN)).json()["agents"]
            if agents[0]["lost"]:
                break
            await anyio.sleep(0.2)
        assert agents[0]["lost"] is True
        assert time.monotonic() - restarted >= 2.0  # lost only after TTL + grace (2.5 s from start)


@pytest.mark.anyio
async def test_restart_with_empty_db_rebuilds_from_reports(server: Server, tmp_path: Path) -> None:
    server.start()
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as client:
        await client.put("/v1/agents/a1", content=report_body(), headers=AGENT)
        server.stop()
        server.start(SAGE_COORDINATOR_DB_PATH=str(tmp_path / "fresh.db"))
        table = (await client.get("/v1/management/backends", headers=ADMIN)).json()
        assert table["backends"] == []
        r = await client.put("/v1/agents/a1", content=report_body(), headers=AGENT)
        assert r.status_code == 200
        table = (await client.get("/v1/management/backends", headers=ADMIN)).json()
        assert [b["id"] for b in table["backends"]] == ["e1"]


@pytest.mark.anyio
async def test_registered_simulator_probed_to_ready_and_error(
    server: Server,
    processes: Any,
    wait_http: Callable[..., httpx.Response],
    free_tcp_port_factory: Callable[[], int],
) -> None:
    sim_port = free_tcp_port_factory()
    processes.python(
        "-m",
        "sage.unified.agent.simulator",
        "--model",
        "sim-m",
        "--port",
        str(sim_port),
        "--enable-control",
        name="sim",
    )
    wait_http(f"http://127.0.0.1:{sim_port}/health", timeout=30)
    server.start(SAGE_COORDINATOR_PROBE_INTERVAL_S="0.2", SAGE_COORDINATOR_PROBE_TIMEOUT_S="2")
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as client:
        r = await client.post(
            "/v1/management/engines/register",
            json={"model": "sim-m", "url": f"http://127.0.0.1:{sim_port}", "id": "sim1"},
            headers=ADMIN,
        )
        assert r.status_code == 201, r.text

        async def wait_state(state: str) -> dict[str, Any]:
            with anyio.fail_after(15):
                while True:
                    info: dict[str, Any] = (
                        await client.get("/v1/management/engines/sim1", headers=ADMIN)
                    ).json()
                    if info["state"] == state:
                        return info
                    await anyio.sleep(0.1)

        await wait_state("READY")
        table = (await client.get("/v1/management/backends", headers=ADMIN)).json()
        assert [b["id"] for b in table["backends"]] == ["sim1"]
        await client.post(f"http://127.0.0.1:{sim_port}/sim/config", json={"healthy": False})
        info = await wait_state("ERROR")
        assert "503" in info["reason"]
        assert (await client.get("/v1/management/backends", headers=ADMIN)).json()["backends"] == []
        await client.post(f"http://127.0.0.1:{sim_port}/sim/config", json={"healthy": True})
        await wait_state("READY")
