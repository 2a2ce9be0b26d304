"""The agent as a real process supervising real simulated engines on loopback.

A fake coordinator (stdlib HTTP server in a thread) records the agent's reports.
Intervals are shortened through ``SAGE_AGENT_*`` variables; the defaults are
unchanged. Every engine left behind is killed at teardown (engines live in their
own sessions, so killing the agent does not reach them, by design).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

TOKEN = "integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeCoordinator:
    """Accepts ``PUT /v1/agents/{id}`` and keeps every report."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._lock = threading.Lock()
        coordinator = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                report = json.loads(body)
                with coordinator._lock:
                    coordinator.reports.append(report)
                    coordinator.auth.append(self.headers.get("Authorization"))
                    listeners = list(coordinator.listeners)
                for listener in listeners:
                    listener(report)
                reply = json.dumps(
                    {
                        "lease_ttl_s": 10.0,
                        "heartbeat_interval_s": 0.5,
                        "revision": len(self.server_reports()),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def server_reports(self) -> list[dict[str, Any]]:
                return coordinator.reports

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return self.reports[-1]

    def engines(self) -> dict[str, dict[str, Any]]:
        return {e["id"]: e for e in self.latest()["engines"]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_range(size: int = 12) -> tuple[int, int]:
    for _ in range(50):
        base = _free_port()
        if base + size > 65000:
            continue
        ports = range(base, base + size)
        ok = True
        for port in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base, base + size - 1
    raise RuntimeError("no free port range")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class AgentRig:
    """Starts agents (same SAGE_HOME) and talks to them."""

    def __init__(self, processes: Any, home: Path, coordinator: FakeCoordinator, tmp: Path) -> None:
        self.processes = processes
        self.home = home
        self.coordinator = coordinator
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        low, high = _free_range()
        wrapper = tmp / "sim-python"
        # The simulator's control endpoint (POST /sim/config) lets the test make /health
        # fail while the process lives; the agent's argv never enables it.
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@" --enable-control\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
        # An empty file of its own keeps the machine's TOML files out.
        (tmp / "empty.toml").write_text("")
        self.env = {
            "SAGE_HOME": str(home),
            "SAGE_AGENT_CONFIG": str(tmp / "empty.toml"),
            "SAGE_AGENT_AGENT_ID": "it-agent",
            "SAGE_AGENT_PORT": str(self.port),
            "SAGE_AGENT_TOKEN": TOKEN,
            "SAGE_AGENT_COORDINATOR_URL": coordinator.url,
            "SAGE_AGENT_ENGINE_PORT_RANGE": f"{low}-{high}",
            "SAGE_AGENT_MODEL_ALLOWLIST": "sim-*",
            "SAGE_AGENT_SIMULATOR_PYTHON": str(wrapper),
            "SAGE_AGENT_PROBE_INTERVAL_S": "0.3",
            "SAGE_AGENT_PROBE_TIMEOUT_S": "1.0",
            "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "0.5",
            "SAGE_AGENT_RESTART_BACKOFF_INITIAL_S": "1.0",
            "SAGE_AGENT_RESTART_BACKOFF_MAX_S": "1.0",
            "SAGE_AGENT_RESTART_MAX": "2",
            "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.5",
            "SAGE_AGENT_STOP_GRACE_S": "3",
        }
        self.agent: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30.0)

    def start(self, backend: str = "asyncio", **env: str) -> subprocess.Popen[bytes]:
        self.agent = self.processes.python(
            "-m", "sage.unified.agent", backend, env={**self.env, **env}, name="agent"
        )
        try:
            wait_until(
                lambda: self.http.get("/readyz", timeout=1.0).status_code == 200,
                30.0,
                "agent /readyz",
            )
        except AssertionError:
            print(self.processes.log_of(self.agent))
            raise
        return self.agent

    def start_engine(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {"model": name, "runtime": "simulated", **spec}
        response = self.http.post("/v1/engines", json=body, headers=AUTH)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def engine(self, engine_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/engines/{engine_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_state(
        self, engine_id: str, state: str, timeout: float, **match: Any
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            info = self.engine(engine_id)
            if info["state"] == state and all(info[k] == v for k, v in match.items()):
                return info
            return None

        return dict(wait_until(check, timeout, f"{engine_id} {state} {match}"))

    def engine_pids(self) -> list[int]:
        state = json.loads((self.home / "agent" / "agent-state.json").read_text())
        return [e["pid"] for e in state["engines"] if e.get("pid")]

    def kill_engines(self) -> None:
        path = self.home / "agent" / "agent-state.json"
        if not path.exists():
            return
        for engine in json.loads(path.read_text())["engines"]:
            pid, created = engine.get("pid"), engine.get("pid_create_time")
            if not pid:
                continue
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 0.1:
                    os.killpg(engine.get("pgid") or pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue


def simulators_running(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd = proc.info.get("cmdline") or []
        env = proc.info.get("environ") or {}
        if "sage.unified.agent.simulator" in cmd and env.get("SAGE_HOME") == str(home):
            found.append(proc)
    return found


@pytest.fixture
def rig(processes: Any, sage_home: Path, tmp_path: Path) -> Iterator[AgentRig]:
    coordinator = FakeCoordinator()
    rig = AgentRig(processes, sage_home, coordinator, tmp_path)
    try:
        yield rig
    finally:
        processes.kill_all()
        rig.kill_engines()
        rig.http.close()
        coordinator.close()


def test_supervision_restart_unhealthy_drain_and_stop_on_exit(rig: AgentRig) -> None:
    rig.start("asyncio", SAGE_AGENT_STOP_ENGINES_ON_EXIT="1")
    a = rig.start_engine("sim-a", simulator={"itl_ms": 40, "output_tokens": 15})
    b = rig.start_engine("sim-b")
    assert a["state"] == b["state"] == "STARTING"
    assert a["port"] != b["port"]
    a = rig.wait_state(a["id"], "READY", 20)
    b = rig.wait_state(b["id"], "READY", 20)
    wait_until(
        lambda: {e["state"] for e in rig.coordinator.engines().values()} == {"READY"},
        5,
        "both READY reported",
    )
    assert set(rig.coordinator.engines()) == {a["id"], b["id"]}
    assert rig.coordinator.auth[-1] == f"Bearer {TOKEN}"

    # kill -9 an engine: ERROR within 6 s (with exit code), restarted: same id and port.
    os.kill(a["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    error = rig.wait_state(a["id"], "ERROR", 6, incarnation=0)
    assert time.monotonic() - killed_at < 6
    assert "code -9 (SIGKILL)" in error["reason"]
    a2 = rig.wait_state(a["id"], "READY", 20, incarnation=1)
    assert a2["pid"] != a["pid"]
    assert a2["port"] == a["port"]
    assert a2["restarts"] == 1

    # /health turns 503 while the process lives: ERROR after 3 failed probes, restarted.
    response = httpx.post(f"{b['url']}/sim/config", json={"healthy": False}, timeout=5)
    assert response.status_code == 200, response.text
    error = rig.wait_state(b["id"], "ERROR", 6, incarnation=0)
    # Three failed checks in a row (or two, on a machine slow enough that 1.3 s passed).
    assert re.fullmatch(r"health check failed (3 times|2 times in [\d.]+ s): 503", error["reason"])
    rig.wait_state(b["id"], "READY", 20, incarnation=1)
    assert (
        not psutil.pid_exists(b["pid"]) or psutil.Process(b["pid"]).status() == psutil.STATUS_ZOMBIE
    )

    # Drain under continuous load: clients stop sending once the coordinator hears
    # DRAINING (what the gateway does); every request sent must succeed.
    routed = threading.Event()
    routed.set()

    def on_report(report: dict[str, Any]) -> None:
        for engine in report["engines"]:
            if engine["id"] == a["id"] and engine["state"] != "READY":
                routed.clear()

    rig.coordinator.listeners.append(on_report)
    results: list[int | str] = []

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while routed.is_set():
                try:
                    r = http.post(
                        f"{a['url']}/v1/completions",
                        json={"model": "sim-a", "prompt": "hello", "max_tokens": 15},
                    )
                    results.append(r.status_code)
                except httpx.HTTPError as exc:
                    results.append(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(client)
        wait_until(lambda: len(results) >= 8, 15, "load running")
        drained = rig.http.post(
            f"/v1/engines/{a['id']}/drain", params={"timeout_s": 30}, headers=AUTH
        )
    assert drained.status_code == 200, drained.text
    assert drained.json()["state"] == "STOPPED"
    assert "no requests in flight" in drained.json()["reason"]
    assert results
    assert all(code == 200 for code in results), [r for r in results if r != 200][:5]
    assert not psutil.pid_exists(a2["pid"])

    # SIGTERM with stop_engines_on_exit: the agent stops its engines and exits 0.
    assert rig.agent is not None
    b_pid = rig.engine(b["id"])["pid"]
    rig.agent.send_signal(signal.SIGTERM)
    assert rig.agent.wait(timeout=15) == 0
    wait_until(lambda: not psutil.pid_exists(b_pid), 5, "engine b gone")
    assert simulators_running(rig.home) == []


def test_agent_restart_adopts_engines(rig: AgentRig) -> None:
    rig.start("trio")
    first = [rig.start_engine("sim-x"), rig.start_engine("sim-y")]
    infos = [rig.wait_state(e["id"], "READY", 20) for e in first]
    pids = sorted(e["pid"] for e in infos)
    first_incarnation = rig.coordinator.latest()["incarnation"]

    # SIGTERM (the default keeps engines running; systemd's KillMode=process does too).
    assert rig.agent is not None
    rig.agent.send_signal(signal.SIGTERM)
    assert rig.agent.wait(timeout=15) == 0
    assert all(psutil.pid_exists(pid) for pid in pids)

    for round_, backend in enumerate(("asyncio", "trio")):
        reports_before = len(rig.coordinator.reports)
        started = time.monotonic()
        rig.start(backend)
        engines = {e["id"]: e for e in rig.http.get("/v1/engines").json()["engines"]}
        assert set(engines) == {e["id"] for e in infos}
        # Adopted: same processes, READY at once (one readiness probe), nothing relaunched.
        assert sorted(e["pid"] for e in engines.values()) == pids
        assert {e["state"] for e in engines.values()} == {"READY"}
        assert {e["incarnation"] for e in engines.values()} == {0}
        assert sorted(p.pid for p in simulators_running(rig.home)) == pids
        # Re-registered right away with a higher agent incarnation, engines READY.
        report = wait_until(
            lambda: len(rig.coordinator.reports) > reports_before and rig.coordinator.latest(),  # noqa: B023
            2,
            "first report after restart",
        )
        assert report["incarnation"] > first_incarnation
        assert {e["state"] for e in report["engines"]} == {"READY"}
        assert time.monotonic() - started < 10
        if round_ == 0:
            # kill -9 the agent this time.
            assert rig.agent is not None
            rig.agent.kill()
            rig.agent.wait(timeout=5)
            assert all(psutil.pid_exists(pid) for pid in pids)

    # No port double-booked: a new engine gets a port none of the adopted ones holds.
    third = rig.start_engine("sim-z")
    assert third["port"] not in {e["port"] for e in infos}
    taken = rig.http.post(
        "/v1/engines",
        json={"model": "sim-w", "runtime": "simulated", "port": infos[0]["port"]},
        headers=AUTH,
    )
    assert taken.status_code == 409, taken.text
    rig.wait_state(third["id"], "READY", 20)
    for e in [*infos, third]:
        stopped = rig.http.delete(f"/v1/engines/{e['id']}", headers=AUTH)
        assert stopped.json()["state"] == "STOPPED"
    assert simulators_running(rig.home) == []


def _descriptors(pid: int) -> dict[int, str]:
    """What each open descriptor of ``pid`` points to (``socket:[inode]``, a path...)."""
    fd_dir = f"/proc/{pid}/fd"
    found = {}
    for name in os.listdir(fd_dir):
        try:
            found[int(name)] = os.readlink(f"{fd_dir}/{name}")
        except FileNotFoundError:
            continue  # closed while we looked
    return found


def _listeners(port: int) -> set[int | None]:
    """Pids of the processes listening on TCP ``port``."""
    return {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    }


def test_a_killed_agent_comes_back_on_its_port_and_readopts_its_engine(rig: AgentRig) -> None:
    # asyncio runs on uvloop here, whose process spawning ignores close_fds: the agent's
    # listening socket used to live on in every engine.
    agent = rig.start("asyncio")
    engine = rig.start_engine("sim-fd")
    engine = rig.wait_state(engine["id"], "READY", 20)
    agent_sockets = {
        target
        for target in _descriptors(agent.pid).values()
        if target.startswith(("socket:", "pipe:"))  # anon_inode names carry no inode
    }
    engine_fds = _descriptors(engine["pid"])
    assert engine_fds[0] == "/dev/null"
    assert engine_fds[1] == engine_fds[2]
    assert engine_fds[1].endswith(f"{engine['id']}.log")
    leaked = {fd: target for fd, target in engine_fds.items() if target in agent_sockets}
    assert leaked == {}, f"the engine holds descriptors of the agent: {leaked}"
    assert _listeners(rig.port) == {agent.pid}

    agent.kill()
    agent.wait(timeout=5)
    killed_at = time.monotonic()
    assert _listeners(rig.port) == set(), "nothing may keep listening on the agent's port"
    rig.start("asyncio")
    back_after = time.monotonic() - killed_at
    print(f"agent ready again on port {rig.port} {back_after:.2f} s after kill -9")
    adopted = rig.engine(engine["id"])
    assert adopted["state"] == "READY"
    assert adopted["pid"] == engine["pid"]
    assert (adopted["incarnation"], adopted["restarts"]) == (0, 0)
    assert back_after < 10, f"the agent took {back_after:.1f} s to come back"
    assert rig.agent is not None
    assert _listeners(rig.port) == {rig.agent.pid}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_stopped_engine_is_found_within_6_s_killed_at_once_and_restarted(
    rig: AgentRig,
) -> None:
    # The default probe settings (the rig shortens them) and the default 30 s grace.
    rig.start(
        "asyncio",
        SAGE_AGENT_PROBE_INTERVAL_S="2",
        SAGE_AGENT_PROBE_TIMEOUT_S="3",
        SAGE_AGENT_STOP_GRACE_S="30",
    )
    engine = rig.start_engine("sim-hang")
    engine = rig.wait_state(engine["id"], "READY", 20)
    os.kill(engine["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        error = rig.wait_state(engine["id"], "ERROR", 20, incarnation=0)
        detect_s = time.monotonic() - stopped_at
        wait_until(lambda: _gone(engine["pid"]), 20, "the stopped engine killed")
        kill_s = time.monotonic() - stopped_at
    finally:
        if not _gone(engine["pid"]):
            os.kill(engine["pid"], signal.SIGCONT)
    print(f"SIGSTOP -> ERROR after {detect_s:.2f} s, process killed after {kill_s:.2f} s")
    assert "timed out" in error["reason"]
    assert "the process is stopped" in error["reason"]
    # Documented: ERROR at most 6 s after the last answered check. Generous margins for a
    # loaded machine, but far below the old 22.8 s + 30 s grace.
    assert detect_s < 12
    assert kill_s - detect_s < 5
    restarted = rig.wait_state(engine["id"], "READY", 30, incarnation=1)
    assert restarted["pid"] != engine["pid"]
    assert restarted["restarts"] == 1


FAKE_NVML_DIR = Path(__file__).resolve().parents[1] / "fake_nvml"
FAKE_VLLM = """#!{python}
# Stands in for `vllm serve MODEL --host H --port P --served-model-name N ...`.
import argparse, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("command")
parser.add_argument("model")
for flag in ("--host", "--port", "--served-model-name"):
    parser.add_argument(flag)
args, _ = parser.parse_known_args()
os.execv(sys.executable, [sys.executable, "-m", "sage.unified.agent.simulator", "--model",
    args.model, "--served-model-name", args.served_model_name, "--host", args.host,
    "--port", args.port])
"""


def test_a_gpu_fault_drains_its_engine_and_placement_avoids_the_gpu_until_cleared(
    rig: AgentRig, tmp_path: Path
) -> None:
    # A real agent process whose `import pynvml` finds the fake library: two GPUs, the
    # first with more free memory. vLLM engines run the simulator through a wrapper.
    nvml_state = tmp_path / "nvml.json"
    gpus = [
        {"uuid": f"GPU-{i}", "free_gib": free, "ecc_uncorrected": 0, "remap_pending": 0}
        for i, free in enumerate((70, 40))
    ]
    nvml_state.write_text(json.dumps({"gpus": gpus, "events": []}))
    vllm = tmp_path / "fake-vllm"
    vllm.write_text(FAKE_VLLM.format(python=sys.executable))
    vllm.chmod(vllm.stat().st_mode | stat.S_IEXEC)
    env = {
        "PYTHONPATH": str(FAKE_NVML_DIR),
        "SAGE_FAKE_NVML": str(nvml_state),
        "SAGE_AGENT_VLLM_EXECUTABLE": str(vllm),
    }
    rig.start("asyncio", **env)
    first = rig.start_engine("sim-gpu-a", runtime="vllm")
    assert first["gpu_ids"] == [0]
    rig.wait_state(first["id"], "READY", 20)

    state = json.loads(nvml_state.read_text())
    state["events"].append({"index": 0, "xid": 79})
    nvml_state.write_text(json.dumps(state))
    drained = rig.wait_state(first["id"], "STOPPED", 20)
    assert "GPU 0 is quarantined: XID 79: GPU has fallen off the bus" in drained["reason"]
    reported = wait_until(
        lambda: [g for g in rig.coordinator.latest()["gpus"] if not g["healthy"]],
        5,
        "the quarantine reported",
    )
    assert [(g["index"], g["fault"]) for g in reported] == [
        (0, "XID 79: GPU has fallen off the bus")
    ]

    second = rig.start_engine("sim-gpu-b", runtime="vllm")
    assert second["gpu_ids"] == [1]  # not GPU 0, although it has the most free memory
    rig.wait_state(second["id"], "READY", 20)
    named = rig.http.post(
        "/v1/engines",
        json={"model": "sim-gpu-c", "runtime": "vllm", "gpu_ids": [0]},
        headers=AUTH,
    )
    assert named.status_code == 409, named.text
    assert "GPU 0 is quarantined" in named.json()["error"]["message"]

    # The quarantine outlives the agent.
    assert rig.agent is not None
    rig.agent.kill()
    rig.agent.wait(timeout=5)
    rig.start("asyncio", **env)
    healthy = [g["healthy"] for g in rig.http.get("/v1/gpus").json()["gpus"]]
    assert healthy == [False, True]
    assert rig.engine(second["id"])["state"] == "READY"

    cleared = rig.http.post("/v1/gpus/0/clear", headers=AUTH)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["healthy"] is True
    third = rig.start_engine("sim-gpu-c", runtime="vllm", gpu_ids=[0])
    rig.wait_state(third["id"], "READY", 20)
    for engine in (second, third):
        assert rig.http.delete(f"/v1/engines/{engine['id']}", headers=AUTH).status_code == 200


def test_engine_that_never_becomes_ready_is_capped(rig: AgentRig) -> None:
    rig.start("asyncio", SAGE_AGENT_RESTART_MAX="1")
    slow = rig.start_engine("sim-slow", startup_timeout_s=1.5, simulator={"startup_delay_s": 60})
    started = time.monotonic()
    error = rig.wait_state(slow["id"], "ERROR", 8, incarnation=0)
    assert time.monotonic() - started >= 1.4  # not failed before its allowance
    assert "startup allowance of 1.5 s" in error["reason"]
    final = wait_until(
        lambda: "restarts exhausted" in (info := rig.engine(slow["id"]))["reason"] and info,
        12,
        "restarts exhausted",
    )
    assert final["state"] == "ERROR"
    assert final["incarnation"] == 1
    assert final["restarts"] == 1
    assert final["pid"] is None  # the last attempt's process tree is gone
    assert simulators_running(rig.home) == []
    logs = rig.http.get(f"/v1/engines/{slow['id']}/logs", params={"tail": 5})
    assert logs.status_code == 200
    assert logs.json()["engine_id"] == slow["id"]


class _Squatter:
    """Another program that took an engine's port and answers like a healthy engine."""

    def __init__(self, port: int, model: str) -> None:
        listing = json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (listing if self.path == "/v1/models" else "{}").encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_process_that_took_the_engines_port_does_not_make_it_ready(rig: AgentRig) -> None:
    rig.start("asyncio", SAGE_AGENT_RESTART_MAX="0")
    # The engine keeps its port closed while it "loads"; meanwhile something else binds
    # it and answers /health and /v1/models as the engine would.
    engine = rig.start_engine("sim-late", simulator={"startup_delay_s": 4})
    squatter = _Squatter(engine["port"], "sim-late")
    try:
        watch_until = time.monotonic() + 3
        while time.monotonic() < watch_until:
            assert rig.engine(engine["id"])["state"] == "STARTING"
            time.sleep(0.1)
        # The engine then fails to bind its port: an error, never READY.
        rig.wait_state(engine["id"], "ERROR", 15)
    finally:
        squatter.close()
    reported = [
        e["state"]
        for report in list(rig.coordinator.reports)
        for e in report["engines"]
        if e["id"] == engine["id"]
    ]
    assert "READY" not in reported
    log = rig.http.get(f"/v1/engines/{engine['id']}/logs", params={"tail": 50}).text
    assert "address already in use" in log.lower() or "errno 98" in log.lower(), log
