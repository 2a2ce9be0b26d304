"""The ``sage`` command as a new operator meets it (issue 20): restarts that keep the
gateway's configuration and credentials, ports whose holder is named, one rule for which
gateway a command talks to, progress while waiting, a quiet rotated log, the demo run
twice, and one-line errors for configuration files and servers that are not a gateway.

Every test runs the real ``sage`` binary (or ``make demo``'s module) in subprocesses,
with ``SAGE_HOME`` isolated and no ``SAGE_*`` variable of the outer shell.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow

SAGE = str(Path(sys.executable).parent / "sage")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sage(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGE, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(sage_home: Path, processes: object) -> Iterator[dict[str, str]]:
    """A shell with none of the outer SAGE_* settings: SAGE_HOME, free ports for the
    gateway and its local agent, SAGE_GATEWAY_URL naming that gateway, short agent
    intervals (``processes`` reaps what a failed test leaves)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
    port = _free_port()
    shell = {
        **clean,
        "SAGE_HOME": str(sage_home),
        "SAGE_GATEWAY_PORT": str(port),
        "SAGE_GATEWAY_URL": f"http://127.0.0.1:{port}",
        "SAGE_GATEWAY_AGENT_PORT": str(_free_port()),
        "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
        "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
        "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.5",
    }
    yield shell
    sage(shell, "gateway", "stop", "--timeout", "10")


def _record(sage_home: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((sage_home / "gateway" / "gateway.json").read_text())
    return data


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


# ------------------------------------------------------------------ 1. restart


def test_restart_without_the_credentials_refuses_and_leaves_the_gateway_protected(
    env: dict[str, str], sage_home: Path
) -> None:
    secrets = {"SAGE_API_KEYS": "key-1", "SAGE_ADMIN_TOKEN": "admin-1"}
    started = sage({**env, **secrets}, "gateway", "start")
    assert started.returncode == 0, started.stderr
    pid = _record(sage_home)["pid"]

    refused = sage(env, "gateway", "restart")
    assert refused.returncode == 2
    line = _one_line(refused)
    assert "SAGE_API_KEYS" in line
    assert "SAGE_ADMIN_TOKEN" in line
    assert "key-1" not in (sage_home / "gateway" / "gateway.json").read_text()
    # Nothing was stopped, and nothing is open.
    assert _record(sage_home)["pid"] == pid
    url = env["SAGE_GATEWAY_URL"]
    assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
    assert httpx.get(f"{url}/v1/management/engines", timeout=5).status_code == 401


def test_restart_keeps_the_running_configuration_and_adopts_the_engines(
    env: dict[str, str], sage_home: Path
) -> None:
    secrets = {"SAGE_API_KEYS": "key-1", "SAGE_ADMIN_TOKEN": "admin-1"}
    first_shell = {**env, **secrets}
    assert sage(first_shell, "gateway", "start").returncode == 0
    engine = sage(first_shell, "llm", "engine", "start", "tiny", "--runtime", "simulated", "--wait")
    assert engine.returncode == 0, engine.stderr
    engine_id = engine.stdout.split()[0]
    listed = json.loads(sage(first_shell, "llm", "engine", "list", "--json").stdout)
    engine_pid = listed["engines"][0]["pid"]

    # Another shell: the same secrets (a rotated API key), but neither the gateway's
    # port nor its agent's, and another log level.
    ports = {"SAGE_GATEWAY_PORT", "SAGE_GATEWAY_AGENT_PORT"}
    second_shell = {
        **{k: v for k, v in env.items() if k not in ports},
        "SAGE_API_KEYS": "key-2",
        "SAGE_ADMIN_TOKEN": "admin-1",
        "SAGE_GATEWAY_LOG_LEVEL": "error",
    }
    restarted = sage(second_shell, "gateway", "restart")
    assert restarted.returncode == 0, restarted.stderr
    assert "Keeping the running gateway's configuration" in restarted.stdout
    assert "log_level" in restarted.stdout

    url = env["SAGE_GATEWAY_URL"]
    agent_port = env["SAGE_GATEWAY_AGENT_PORT"]
    admin = {"Authorization": "Bearer admin-1"}
    agents = httpx.get(f"{url}/v1/management/agents", headers=admin, timeout=5).json()
    assert [a["url"] for a in agents["agents"]] == [f"http://127.0.0.1:{agent_port}"]
    listed = json.loads(sage(second_shell, "llm", "engine", "list", "--json").stdout)
    assert [(e["id"], e["pid"]) for e in listed["engines"]] == [(engine_id, engine_pid)]
    assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
    key = {"Authorization": "Bearer key-2"}
    assert httpx.get(f"{url}/v1/models", headers=key, timeout=5).status_code == 200


# --------------------------------------------------------- 4 and 6. taken ports


def test_taken_ports_are_refused_in_one_line_naming_their_holder(env: dict[str, str]) -> None:
    holder = f"pid {os.getpid()} ("
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]

        gateway = sage(env, "gateway", "start", "--port", str(taken))
        assert gateway.returncode == 2
        line = _one_line(gateway)
        assert f"port {taken} on 127.0.0.1 is already in use by {holder}" in line
        assert "--port" in line

        agent_port = sage(
            env, "gateway", "start", "--port", str(_free_port()), "--agent-port", str(taken)
        )
        assert agent_port.returncode == 2
        line = _one_line(agent_port)
        assert holder in line
        assert "--agent-port" in line
        assert "SAGE_GATEWAY_AGENT_PORT" in line

        coordinator = sage(env, "coordinator", "run", "--port", str(taken))
        assert coordinator.returncode == 2
        assert holder in _one_line(coordinator)

        agent = sage(env, "agent", "run", "--port", str(taken))
        assert agent.returncode == 2
        line = _one_line(agent)
        assert holder in line
        assert "listening" not in agent.stderr


# ------------------------------------------------------- 5. which gateway


def test_every_command_talks_to_the_gateway_this_home_runs(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k not in {"SAGE_GATEWAY_URL", "SAGE_GATEWAY_PORT"}}
    port = _free_port()
    started = sage(env, "gateway", "start", "--port", str(port))
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"

    for args in (("llm", "engine", "list", "--json"), ("llm", "gpu", "--json")):
        result = sage(env, *args, "--verbose")
        assert result.returncode == 0, (args, result.stderr)
        assert f"gateway: {url} (from the gateway `sage gateway start` runs)" in result.stderr
    status = sage(env, "gateway", "status", "--json", "--verbose")
    assert json.loads(status.stdout)["url"] == url

    # SAGE_GATEWAY_URL still wins, with a warning that names the running gateway.
    elsewhere = f"http://127.0.0.1:{_free_port()}"
    other = sage({**env, "SAGE_GATEWAY_URL": elsewhere}, "llm", "engine", "list")
    assert other.returncode == 2
    assert f"warning: talking to {elsewhere} (SAGE_GATEWAY_URL)" in other.stderr
    assert f"is at {url}" in other.stderr


# ------------------------------------------------------------------ 7. demo


def _time_wait_on(port: int) -> None:
    """Leave a socket in TIME_WAIT on ``port`` (the side that closes first keeps it)."""
    with socket.create_server(("127.0.0.1", port)) as server:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.recv(1)
        client.close()
    deadline = time.monotonic() + 10
    while not any(
        c.status == psutil.CONN_TIME_WAIT and c.laddr and c.laddr.port == port
        for c in psutil.net_connections(kind="tcp")
    ):
        assert time.monotonic() < deadline, "no TIME_WAIT socket appeared"
        time.sleep(0.05)


def test_demo_twice_keeps_one_gateway_on_its_port(env: dict[str, str], sage_home: Path) -> None:
    port = _free_port()
    _time_wait_on(port)
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))  # what the demo's old probe did
    shell = {**env, "SAGE_GATEWAY_PORT": str(port), "SAGE_GATEWAY_AGENT_PORT": str(_free_port())}
    demo = [sys.executable, "-m", "sage.unified.cli.demo"]

    first = subprocess.run(demo, env=shell, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Gateway (OpenAI endpoint): http://127.0.0.1:{port}/v1" in first.stdout
    pid = _record(sage_home)["pid"]

    second = subprocess.run(demo, env=shell, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"Reusing the gateway running at http://127.0.0.1:{port}" in second.stdout
    assert "demo-chat: already running" in second.stdout
    assert _record(sage_home)["pid"] == pid
    at_demo = {**env, "SAGE_GATEWAY_URL": f"http://127.0.0.1:{port}"}
    engines = json.loads(sage(at_demo, "llm", "engine", "list", "--json").stdout)["engines"]
    assert sorted(e["model"] for e in engines) == ["demo-chat", "demo-embed"]

    stopped = subprocess.run([*demo, "--stop"], env=shell, capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr


# ---------------------------------------------------------- 8 and 9. log, progress


def test_waits_show_progress_and_the_log_keeps_to_its_level(
    env: dict[str, str], sage_home: Path
) -> None:
    started = sage(env, "gateway", "start")
    assert started.returncode == 0, started.stderr
    url = env["SAGE_GATEWAY_URL"]
    assert f"waiting for the gateway at {url} to become ready: " in started.stderr

    engine = sage(env, "llm", "engine", "start", "tiny", "--runtime", "simulated", "--wait")
    assert engine.returncode == 0, engine.stderr
    engine_id = engine.stdout.split()[0]
    waited = [line for line in engine.stderr.splitlines() if line.startswith("waiting for")]
    assert waited, engine.stderr
    assert all(
        line.startswith(f"waiting for engine {engine_id} to become READY: ") for line in waited
    )
    assert waited[-1].startswith(f"waiting for engine {engine_id} to become READY: READY")
    assert waited[-1].endswith(" s)")

    # READY means the agent reported, probed and scraped over HTTP: none of it is logged
    # at the default level (warning).
    log = (sage_home / "gateway" / "gateway.log").read_text()
    assert "HTTP Request:" not in log
    assert " INFO " not in log

    drained = sage(env, "llm", "engine", "stop", engine_id, "--drain", "--timeout", "30")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.strip() == f"{engine_id} STOPPED"
    assert f"waiting for engine {engine_id} to drain and stop: " in drained.stderr
    assert "in flight" in drained.stderr


def test_the_gateway_log_rotates_by_size_and_logs_f_follows_it(
    env: dict[str, str], sage_home: Path
) -> None:
    shell = {
        **env,
        "SAGE_GATEWAY_LOG_LEVEL": "debug",
        "SAGE_GATEWAY_LOG_MAX_BYTES": "1024",  # the smallest allowed: rotations come fast
        "SAGE_GATEWAY_LOG_BACKUPS": "2",
    }
    started = sage(shell, "gateway", "start")
    assert started.returncode == 0, started.stderr
    follow = [SAGE, "gateway", "logs", "-f", "-n", "0"]
    with subprocess.Popen(follow, env=shell, stdout=subprocess.PIPE) as follower:
        assert follower.stdout is not None
        output = follower.stdout
        followed: list[bytes] = []
        reader = threading.Thread(target=lambda: followed.extend(iter(output.readline, b"")))
        reader.start()
        try:
            _check_rotation(sage_home / "gateway", env["SAGE_GATEWAY_URL"])
            # A follower stuck on the first file would have seen less than 1 KiB.
            deadline = time.monotonic() + 60
            while sum(map(len, followed)) < 3 * 1024:
                assert time.monotonic() < deadline, sum(map(len, followed))
                time.sleep(0.2)
        finally:
            follower.terminate()
            follower.wait(timeout=10)
            reader.join(timeout=10)


def _check_rotation(logs: Path, url: str) -> None:
    deadline = time.monotonic() + 90
    while not (logs / "gateway.log.2").exists():
        assert time.monotonic() < deadline, sorted(p.name for p in logs.iterdir())
        time.sleep(0.2)
    # Debug shows the requests between components; two backups are kept, no more.
    assert "HTTP Request:" in "".join(
        p.read_text(errors="replace") for p in logs.glob("gateway.log*")
    )
    first_backup = (logs / "gateway.log.2").stat().st_ino
    while (logs / "gateway.log.2").stat().st_ino == first_backup:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not (logs / "gateway.log.3").exists()
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200


# ------------------------------------------------------------- 10. small ones


FAKE_NVML_DIR = Path(__file__).resolve().parents[1] / "fake_nvml"


def test_no_gpu_refusal_says_how_to_run_without_one(env: dict[str, str], tmp_path: Path) -> None:
    # The local agent imports the fake NVML library, which shows no GPU.
    no_gpus = tmp_path / "nvml.json"
    no_gpus.write_text(json.dumps({"gpus": [], "events": []}))
    shell = {**env, "PYTHONPATH": str(FAKE_NVML_DIR), "SAGE_FAKE_NVML": str(no_gpus)}
    started = sage(shell, "gateway", "start")
    assert started.returncode == 0, started.stderr
    refused = sage(shell, "llm", "engine", "start", "some/model")
    assert refused.returncode == 1
    line = _one_line(refused)
    assert "no GPUs" in line
    assert "--runtime simulated" in line


def test_a_server_that_is_not_a_gateway_is_named_not_dumped(
    env: dict[str, str], tmp_path: Path, processes: object, wait_http: object
) -> None:
    port = _free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><head><title>Welcome</title></head></html>")
    assert hasattr(processes, "python")
    processes.python("-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(site))
    url = f"http://127.0.0.1:{port}"
    assert callable(wait_http)
    wait_http(url, timeout=20)
    for args in (("llm", "engine", "list"), ("gateway", "status"), ("llm", "gpu")):
        result = sage(env, *args, "--url", url)
        assert result.returncode == 2, (args, result.stderr)
        line = _one_line(result)
        assert f"{url} does not look like a SAGE gateway" in line, line
        assert "<" not in line, line


def test_configuration_files_are_named_in_errors(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    for component, variable in (
        ("gateway", "SAGE_GATEWAY_CONFIG"),
        ("agent", "SAGE_AGENT_CONFIG"),
        ("coordinator", "SAGE_COORDINATOR_CONFIG"),
    ):
        result = sage({**env, variable: str(missing)}, "config", "show", "--component", component)
        assert result.returncode == 2, (component, result.stdout)
        line = _one_line(result)
        assert variable in line
        assert str(missing) in line

    broken = tmp_path / "broken.toml"
    broken.write_text("port = 8000\nhost = \n")
    shell = {**env, "SAGE_GATEWAY_CONFIG": str(broken)}
    for args in (("config", "show"), ("gateway", "start"), ("gateway", "run")):
        result = sage(shell, *args)
        assert result.returncode == 2, (args, result.stderr)
        line = _one_line(result)
        assert f"{broken} is not valid TOML" in line, line
