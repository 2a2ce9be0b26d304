"""The declarative fleet with real processes on loopback: a gateway (embedded control plane,
no local agent), two agents on separate ports and SAGE_HOMEs, simulated engines, the real
``sage`` CLI, and SDK clients sending chats the whole time.

- ``sage llm apply`` of 4 replicas gives 4 READY spread over both hosts; killing one host
  (its agent and its engines, SIGKILL) brings replacements up on the other within the
  lease TTL plus a start, and no client sees an error.
- A rolling update, ``rollout undo`` and ``sage agent drain`` under load lose no request.

Leases, heartbeats and probes are shortened through the environment; the defaults are
unchanged. Timings are printed (``-s``) and bounded generously: the machine may be loaded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sage.unified.sdk import UnifiedInferenceClient

pytestmark = pytest.mark.slow

SAGE = str(Path(sys.executable).parent / "sage")
LEASE_TTL_S = 2.0
CONTROL_PLANE = {
    "SAGE_COORDINATOR_LEASE_TTL_S": str(LEASE_TTL_S),
    "SAGE_COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
    "SAGE_COORDINATOR_SWEEP_INTERVAL_S": "0.2",
    "SAGE_COORDINATOR_RECONCILE_INTERVAL_S": "0.5",
}
FAST_AGENT = {
    "SAGE_AGENT_PROBE_INTERVAL_S": "0.3",
    "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "0.5",
    "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.5",
}
MSGS = [{"role": "user", "content": "hello"}]


def _free_range(size: int = 10) -> str:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + size > 65000:
            continue
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return f"{base}-{base + size - 1}"
    raise RuntimeError("no free port range")


def fleet_file(path: Path, *, replicas: int, output_tokens: int = 4) -> Path:
    path.write_text(
        f"""
[[deployments]]
name = "chat"
replicas = {replicas}

[deployments.engine]
model = "fleet-chat"
runtime = "simulated"
drain_timeout_s = 30

[deployments.engine.simulator]
ttft_ms = 5
itl_ms = 2
output_tokens = {output_tokens}

[deployments.strategy]
max_surge = 1
max_unavailable = 0
""",
        encoding="utf-8",
    )
    return path


def sage(url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [SAGE, *args],
        env={**os.environ, "SAGE_GATEWAY_URL": url},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def get(url: str, path: str) -> Any:
    response = httpx.get(f"{url}/v1/management{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait(predicate: Callable[[], Any], timeout: float, what: str, url: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    seen = json.dumps(get(url, "/deployments"), indent=1) if url else ""
    raise TimeoutError(f"{what} within {timeout} s\n{seen}")


def ready_replicas(url: str) -> dict[str, str]:
    """Engine id → agent id of the deployment's READY replicas on live hosts."""
    status = get(url, "/deployments/chat")["status"]
    return {r["engine_id"]: r["agent_id"] for r in status["replicas"] if r["state"] == "READY"}


class Load:
    """SDK clients (through the gateway) sending chats until stopped; every failure kept."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.ok = 0
        self.retries = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with UnifiedInferenceClient(self.url, timeout=20, on_retry=self._retried) as client:
            while not self._stop.is_set():
                try:
                    result = client.chat(MSGS, model="fleet-chat", max_tokens=4)
                    assert result.text
                    with self._lock:
                        self.ok += 1
                except Exception as exc:  # every failure is the test's finding
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")

    def _retried(self, event: object) -> None:
        with self._lock:
            self.retries += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


class Fleet:
    def __init__(self, url: str, agents: dict[str, Any]) -> None:
        self.url = url
        self.agents = agents


@pytest.fixture
def fleet(start_gateway, start_agent) -> Fleet:  # type: ignore[no-untyped-def]
    gateway = start_gateway("--no-local-agent", env={**CONTROL_PLANE, **FAST_AGENT})
    agents = {
        agent_id: start_agent(
            gateway.url,
            agent_id,
            env={**FAST_AGENT, "SAGE_AGENT_ENGINE_PORT_RANGE": _free_range()},
        )
        for agent_id in ("a1", "a2")
    }
    wait(
        lambda: {a["agent_id"] for a in get(gateway.url, "/agents")["agents"]} == {"a1", "a2"},
        20,
        "both agents registered",
    )
    return Fleet(gateway.url, agents)


def test_apply_spreads_replicas_and_a_lost_host_is_replaced_without_client_errors(
    fleet: Fleet, tmp_path: Path
) -> None:
    url = fleet.url
    plan = json.loads(
        sage(
            url,
            "llm",
            "apply",
            "-f",
            str(fleet_file(tmp_path / "f.toml", replicas=4)),
            "--dry-run",
            "--json",
        ).stdout
    )
    (entry,) = plan["entries"]
    assert (entry["change"], entry["start"]) == ("create", 4)
    assert sorted(a["host"] for a in entry["actions"]) == ["a1", "a1", "a2", "a2"]
    assert get(url, "/deployments")["deployments"] == []  # a dry run changes nothing

    started = time.monotonic()
    sage(url, "llm", "apply", "-f", str(tmp_path / "f.toml"))
    placed = wait(lambda: len(r := ready_replicas(url)) == 4 and r, 60, "4 READY replicas")
    print(f"\n4 replicas READY {time.monotonic() - started:.1f} s after apply")
    assert sorted(placed.values()) == ["a1", "a1", "a2", "a2"]

    victims = [e for e in get(url, "/engines")["engines"] if e["agent_id"] == "a2"]
    with Load(url) as load:
        time.sleep(1.0)
        os.killpg(fleet.agents["a2"].proc.pid, signal.SIGKILL)
        for engine in victims:
            os.killpg(engine["pid"], signal.SIGKILL)
        killed = time.monotonic()
        replaced = wait(
            lambda: sorted((r := ready_replicas(url)).values()) == ["a1"] * 4 and r,
            60,
            "4 READY replicas on the surviving host",
            url,
        )
        took = time.monotonic() - killed
        time.sleep(1.0)
    print(
        f"host a2 killed: 4 replicas READY on a1 after {took:.1f} s "
        f"(lease TTL {LEASE_TTL_S:g} s); {load.ok} requests, {len(load.errors)} errors, "
        f"{load.retries} SDK retries"
    )
    assert load.errors == []
    assert load.ok > 20
    assert not set(replaced) & {e["id"] for e in victims}
    assert took < LEASE_TTL_S + 30  # the lease, then a start; generous for a loaded machine
    status = get(url, "/deployments/chat")["status"]
    assert (status["desired"], status["ready"], status["unavailable"]) == (4, 4, 0)
    time.sleep(1.5)  # a few more passes: nothing starts twice
    assert len(ready_replicas(url)) == 4
    replicas = get(url, "/deployments/chat")["status"]["replicas"]
    live = [r for r in replicas if r["agent_id"] == "a1" and r["state"] != "STOPPED"]
    assert len(live) == 4


def test_presets_and_gpu_clear_through_the_cli(fleet: Fleet) -> None:
    url = fleet.url
    plan = sage(url, "llm", "preset", "apply", "simulated-demo", "--dry-run").stdout
    assert "demo-chat" in plan
    assert "demo-embed" in plan
    asked = subprocess.run(
        [SAGE, "llm", "preset", "apply", "simulated-demo"],
        env={**os.environ, "SAGE_GATEWAY_URL": url},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert asked.returncode == 2
    assert "--yes" in asked.stderr
    assert get(url, "/deployments")["deployments"] == []
    cleared = subprocess.run(
        [SAGE, "llm", "gpu", "clear", "a1:0"],
        env={**os.environ, "SAGE_GATEWAY_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cleared.returncode == 1  # the agent has no GPU 0: its 404, in one line
    assert "no GPU 0" in cleared.stderr
    assert len(cleared.stderr.strip().splitlines()) == 1
    audit = get(url, "/audit")["entries"]
    assert any(e["action"] == "gpu.clear" and e["target"] == "a1:0" for e in audit)


def test_rolling_update_undo_and_host_drain_lose_no_request(fleet: Fleet, tmp_path: Path) -> None:
    url = fleet.url
    sage(url, "llm", "apply", "-f", str(fleet_file(tmp_path / "v1.toml", replicas=2)))
    first = wait(lambda: len(r := ready_replicas(url)) == 2 and r, 60, "2 READY replicas")
    assert sorted(first.values()) == ["a1", "a2"]

    with Load(url) as load:
        time.sleep(0.5)
        started = time.monotonic()
        sage(
            url,
            "llm",
            "apply",
            "-f",
            str(fleet_file(tmp_path / "v2.toml", replicas=2, output_tokens=5)),
        )
        sage(url, "llm", "rollout", "status", "chat", "--wait", "--timeout", "90")
        rolled = time.monotonic() - started
        status = get(url, "/deployments/chat")["status"]
        assert (status["revision"], status["rollout"]["state"]) == (2, "complete")
        assert not set(first) & set(ready_replicas(url))  # every replica was replaced

        sage(url, "llm", "rollout", "undo", "chat")
        sage(url, "llm", "rollout", "status", "chat", "--wait", "--timeout", "90")
        status = get(url, "/deployments/chat")["status"]
        assert (status["revision"], status["rollout"]["stable_revision"]) == (3, 3)

        started = time.monotonic()
        sage(url, "agent", "drain", "a2", "--wait", "--timeout", "90")
        drained = time.monotonic() - started
        wait(lambda: sorted(ready_replicas(url).values()) == ["a1", "a1"], 30, "2 READY on a1")
        time.sleep(0.5)
    print(
        f"\nrolling update of 2 replicas: {rolled:.1f} s; drain of a2: {drained:.1f} s; "
        f"{load.ok} requests, {len(load.errors)} errors, {load.retries} SDK retries"
    )
    assert load.errors == []
    assert load.ok > 20
    agents = {a["agent_id"]: a for a in get(url, "/agents")["agents"]}
    assert (agents["a2"]["cordoned"], agents["a2"]["draining"]) == (True, True)
    status_text = sage(url, "gateway", "status").stdout
    assert "cordoned: a2 (draining)" in status_text
    sage(url, "agent", "uncordon", "a2")
    agents = {a["agent_id"]: a for a in get(url, "/agents")["agents"]}
    assert agents["a2"]["cordoned"] is False
    listed = sage(url, "llm", "deployments").stdout
    assert "fleet-chat" in listed
