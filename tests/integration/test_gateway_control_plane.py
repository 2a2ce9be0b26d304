"""The gateway with its control plane: embedded coordinator + local agent, and a
standalone coordinator. Real processes on loopback, engines started through the
management API, traffic through the OpenAI endpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
FAST_AGENT = {
    "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
    "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
    "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.5",
    "SAGE_AGENT_RESTART_BACKOFF_INITIAL_S": "0.5",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _engines(url: str) -> dict[str, dict[str, Any]]:
    data = httpx.get(f"{url}/v1/management/engines", timeout=5).json()
    return {e["id"]: e for e in data["engines"]}


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s")


def _start_engine(url: str, model: str = "tiny", **simulator: Any) -> str:
    spec = {
        "model": model,
        "runtime": "simulated",
        "simulator": {"ttft_ms": 5, "itl_ms": 2, "output_tokens": 4, **simulator},
    }
    response = httpx.post(f"{url}/v1/management/engines/start", json={"spec": spec}, timeout=15)
    assert response.status_code in (201, 202), response.text
    engine_id: str = response.json()["id"]
    assert response.json()["state"] == "STARTING"
    return engine_id


def _routable(url: str) -> set[str]:
    table = httpx.get(f"{url}/v1/management/backends", timeout=5).json()
    return {b["id"] for b in table["backends"]}


class _Load:
    """Closed-loop clients sending non-streaming chats until stopped."""

    def __init__(self, url: str, clients: int = 4, streaming: int = 0) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.served_by: list[str] = []
        self.streams_done = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        self._threads += [threading.Thread(target=self._stream) for _ in range(streaming)]

    def _stream(self) -> None:
        body = {**CHAT, "stream": True, "max_tokens": 16}
        with httpx.Client(timeout=20) as client:
            while not self._stop.is_set():
                try:
                    with client.stream(
                        "POST", f"{self.url}/v1/chat/completions", json=body
                    ) as response:
                        text = "".join(response.iter_text())
                    self.statuses.append(response.status_code)
                    if response.status_code != 200 or not text.rstrip().endswith("data: [DONE]"):
                        self.errors.append(f"stream {response.status_code}: {text[-200:]}")
                    else:
                        self.streams_done += 1
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def _run(self) -> None:
        with httpx.Client(timeout=20) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.url}/v1/chat/completions", json=CHAT)
                    self.statuses.append(response.status_code)
                    self.served_by.append(response.headers.get("x-sage-backend", ""))
                    if response.status_code != 200:
                        self.errors.append(response.text)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.fixture
def embedded(start_gateway) -> str:  # type: ignore[no-untyped-def]
    return str(start_gateway(env=FAST_AGENT).url)


def test_engine_killed_under_load_is_routed_around_restarted_and_back(embedded: str) -> None:
    first = _start_engine(embedded)
    second = _start_engine(embedded)
    _wait(lambda: _routable(embedded) == {first, second}, 30, "both engines READY and routable")
    victim = _engines(embedded)[first]

    with _Load(embedded) as load:
        time.sleep(0.5)
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        gone = _wait(
            lambda: first not in _routable(embedded), 10, "the killed engine leaves the table"
        )
        time.sleep(0.5)
    assert gone < 4.0
    assert load.errors == []
    assert len(load.statuses) > 20
    assert set(load.statuses) == {200}
    # Restarted by its agent: same id, next incarnation, READY and routable again.
    _wait(lambda: first in _routable(embedded), 30, "the engine is routable again")
    engine = _engines(embedded)[first]
    assert engine["state"] == "READY"
    assert engine["incarnation"] == victim["incarnation"] + 1
    assert engine["pid"] != victim["pid"]
    assert time.monotonic() - killed_at < 30


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


def test_engines_of_the_embedded_agent_hold_no_descriptor_of_the_gateway(
    start_gateway,  # type: ignore[no-untyped-def]
) -> None:
    agent_port = _free_port()
    gateway = start_gateway(env={**FAST_AGENT, "SAGE_GATEWAY_AGENT_PORT": str(agent_port)})
    engine_id = _start_engine(gateway.url)
    _wait(lambda: engine_id in _routable(gateway.url), 30, "the engine READY")
    engine_pid = _engines(gateway.url)[engine_id]["pid"]
    gateway_fds = _descriptors(gateway.proc.pid)
    shared = {
        target
        for target in gateway_fds.values()
        if target.startswith(("socket:", "pipe:"))  # anon_inode names carry no inode
    }
    listening = {
        f"socket:[{inode}]"
        for inode in _listening_inodes(gateway.proc.pid, {gateway.port, agent_port})
    }
    assert len(listening) == 2, "the gateway's and its agent's listening sockets"
    engine_fds = _descriptors(engine_pid)
    assert engine_fds[0] == "/dev/null"
    assert engine_fds[1] == engine_fds[2]
    assert engine_fds[1].endswith(f"{engine_id}.log")
    leaked = {fd: target for fd, target in engine_fds.items() if target in shared}
    assert leaked == {}, f"engine {engine_pid} holds descriptors of the gateway: {leaked}"
    assert not listening & set(engine_fds.values())


def _listening_inodes(pid: int, ports: set[int]) -> set[str]:
    """Inodes of the TCP sockets ``pid`` listens on at ``ports`` (from /proc/net/tcp*)."""
    wanted = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "0A" and port in ports:  # 0A: LISTEN
                    wanted.add(fields[9])
    owned = {target for target in _descriptors(pid).values() if target.startswith("socket:")}
    return {inode for inode in wanted if f"socket:[{inode}]" in owned}


def test_drain_under_load_loses_nothing_and_stops_the_engine(embedded: str) -> None:
    first = _start_engine(embedded, ttft_ms=50, itl_ms=20, output_tokens=16)
    second = _start_engine(embedded, ttft_ms=50, itl_ms=20, output_tokens=16)
    _wait(lambda: _routable(embedded) == {first, second}, 30, "both engines READY")
    # Steady streaming load (each stream ~0.35 s) plus non-streamed requests.
    with _Load(embedded, clients=3, streaming=4) as load:
        time.sleep(0.5)
        response = httpx.post(
            f"{embedded}/v1/management/engines/stop",
            json={"engine_id": first, "drain": True},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert first not in _routable(embedded)  # out of routing at once
        _wait(
            lambda: _engines(embedded)[first]["state"] == "STOPPED",
            30,
            "the drained engine STOPPED",
        )
        time.sleep(0.3)
    assert load.errors == []
    assert set(load.statuses) == {200}
    assert len(load.statuses) > 20
    assert load.streams_done > 8  # streams completed with [DONE] across the drain


def test_a_model_with_no_ready_engine_gets_503_with_retry_after(embedded: str) -> None:
    engine = _start_engine(embedded, model="slow", startup_delay_s=4)
    response = httpx.post(
        f"{embedded}/v1/chat/completions", json={**CHAT, "model": "slow"}, timeout=5
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "no_backend_available"
    assert int(response.headers["retry-after"]) > 0
    unknown = httpx.post(
        f"{embedded}/v1/chat/completions", json={**CHAT, "model": "never-started"}, timeout=5
    )
    assert unknown.status_code == 404
    _wait(lambda: engine in _routable(embedded), 30, "the slow engine becomes READY")
    assert (
        httpx.post(
            f"{embedded}/v1/chat/completions", json={**CHAT, "model": "slow"}, timeout=5
        ).status_code
        == 200
    )


def test_gateway_keeps_serving_when_the_standalone_coordinator_dies(
    processes, start_gateway, wait_http, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    coordinator_port = _free_port()
    coordinator_url = f"http://127.0.0.1:{coordinator_port}"
    coordinator = processes.python(
        "-m",
        "sage.unified.cli",
        "coordinator",
        "run",
        "--port",
        str(coordinator_port),
        env={"SAGE_COORDINATOR_DB_PATH": str(tmp_path / "coordinator.db")},
        name="coordinator",
    )
    wait_http(f"{coordinator_url}/health", timeout=20)
    agent_port = _free_port()
    processes.python(
        "-m",
        "sage.unified.cli",
        "agent",
        "run",
        "--coordinator",
        coordinator_url,
        "--port",
        str(agent_port),
        env={**FAST_AGENT, "SAGE_HOME": str(tmp_path / "agent-home")},
        name="agent",
    )
    wait_http(f"http://127.0.0.1:{agent_port}/readyz", timeout=20)
    gateway = start_gateway("--coordinator", coordinator_url).url

    engine = _start_engine(gateway)  # through the gateway's management proxy
    _wait(lambda: engine in _routable(gateway), 30, "the engine is routable through the gateway")
    assert httpx.post(f"{gateway}/v1/chat/completions", json=CHAT, timeout=5).status_code == 200

    os.kill(coordinator.pid, signal.SIGKILL)
    coordinator.wait()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert httpx.post(f"{gateway}/v1/chat/completions", json=CHAT, timeout=5).status_code == 200
        time.sleep(0.1)
    ready = httpx.get(f"{gateway}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["control_plane_reachable"] is False
    assert ready.json()["status"] == "degraded"
