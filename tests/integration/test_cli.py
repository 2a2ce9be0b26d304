"""The real ``sage`` command in subprocesses, with SAGE_HOME isolated."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
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


@pytest.fixture
def cli_env(sage_home: Path) -> dict[str, str]:
    port = _free_port()
    return {
        **os.environ,
        "SAGE_HOME": str(sage_home),
        "SAGE_GATEWAY_PORT": str(port),
        "SAGE_GATEWAY_AGENT_PORT": str(_free_port()),
        "SAGE_GATEWAY_URL": f"http://127.0.0.1:{port}",
        "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
        "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
        "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.5",
    }


def sage(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _descendants_alive(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.is_running()]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def gateway(cli_env: dict[str, str]):  # type: ignore[no-untyped-def]
    started = sage(cli_env, "gateway", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    yield cli_env
    sage(cli_env, "gateway", "stop", "--timeout", "10")


def test_no_gateway_gives_one_line_hint_and_exit_2(cli_env: dict[str, str]) -> None:
    for args in (("llm", "engine", "list"), ("gateway", "status"), ("llm", "gpu")):
        result = sage(cli_env, *args)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "The gateway is not running at" in lines[0]
        assert "sage gateway start" in lines[0]
        assert "Traceback" not in result.stderr + result.stdout


def test_gateway_start_status_logs_restart_stop_leave_nothing_behind(
    cli_env: dict[str, str], sage_home: Path
) -> None:
    started = sage(cli_env, "gateway", "start")
    assert started.returncode == 0, started.stderr
    assert "Gateway ready at" in started.stdout
    record = json.loads((sage_home / "gateway" / "gateway.json").read_text())
    first_pid = record["pid"]

    again = sage(cli_env, "gateway", "start")
    assert again.returncode == 0
    assert f"already running (pid {first_pid})" in again.stdout

    status = sage(cli_env, "gateway", "status", "--json")
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["status"] == "ready"
    assert summary["mode"] == "embedded"
    assert len(summary["agents"]) == 1

    logs = sage(cli_env, "gateway", "logs", "-n", "5")
    assert logs.returncode == 0
    assert "started" in (sage_home / "gateway" / "gateway.log").read_text()

    engine = sage(cli_env, "llm", "engine", "start", "tiny", "--runtime", "simulated", "--wait")
    assert engine.returncode == 0, engine.stderr
    engine_pid = next(iter(_descendants_alive(first_pid))).pid

    restarted = sage(cli_env, "gateway", "restart")
    assert restarted.returncode == 0, restarted.stderr
    second_pid = json.loads((sage_home / "gateway" / "gateway.json").read_text())["pid"]
    assert second_pid != first_pid
    # The engine survived the restart and was adopted, not relaunched.
    assert psutil.pid_exists(engine_pid)
    listed = json.loads(sage(cli_env, "llm", "engine", "list", "--json").stdout)
    assert [e["pid"] for e in listed["engines"]] == [engine_pid]

    stopped = sage(cli_env, "gateway", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert (
        not psutil.pid_exists(second_pid)
        or psutil.Process(second_pid).status() == psutil.STATUS_ZOMBIE
    )
    deadline = time.monotonic() + 10
    while psutil.pid_exists(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(engine_pid), "an engine outlived `sage gateway stop`"

    not_running = sage(cli_env, "gateway", "stop")
    assert not_running.returncode == 0
    assert "not running" in not_running.stdout


def test_engine_start_wait_list_chat_and_drain_stop(gateway: dict[str, str]) -> None:
    env = gateway
    started = sage(env, "llm", "engine", "start", "tiny", "--runtime", "simulated", "--wait")
    assert started.returncode == 0, started.stderr
    engine_id = started.stdout.split()[0]
    assert "READY" in started.stdout

    listed = sage(env, "llm", "engine", "list", "--json")
    engines = json.loads(listed.stdout)["engines"]
    assert [(e["id"], e["state"]) for e in engines] == [(engine_id, "READY")]
    table = sage(env, "llm", "engine", "list")
    assert engine_id[:6] in table.stdout

    url = env["SAGE_GATEWAY_URL"]
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=10,
    )
    assert chat.status_code == 200

    # A slow engine (50 ms per token) with a stream in flight while the drain runs: the
    # stream must finish with [DONE], then the engine stops.
    spec = {
        "model": "slow",
        "runtime": "simulated",
        "simulator": {"itl_ms": 50, "output_tokens": 40},
    }
    slow_id = httpx.post(
        f"{url}/v1/management/engines/start", json={"spec": spec}, timeout=10
    ).json()["id"]
    deadline = time.monotonic() + 30
    while {
        e["id"]: e["state"]
        for e in json.loads(sage(env, "llm", "engine", "list", "--json").stdout)["engines"]
    }[slow_id] != "READY":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    results: list[str] = []

    def slow_request() -> None:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            results.append("".join(response.iter_text()))

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)
    drained = sage(env, "llm", "engine", "stop", slow_id, "--drain", "--timeout", "30")
    assert not thread.is_alive(), "--drain returned before the in-flight request finished"
    thread.join(timeout=30)
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.strip() == f"{slow_id} STOPPED"
    assert results[0].rstrip().endswith("data: [DONE]")

    logs = sage(env, "llm", "engine", "logs", engine_id, "-n", "20")
    assert logs.returncode == 0, logs.stderr


def test_bad_input_gets_a_message_not_a_traceback(gateway: dict[str, str]) -> None:
    cases = [
        (
            ("llm", "engine", "start", "../etc/passwd", "--runtime", "simulated"),
            "invalid engine spec",
        ),
        (("llm", "engine", "start", "tiny", "--gpus", "a,b"), "--gpus"),
        (("llm", "engine", "stop", "no-such-engine"), "no-such-engine"),
    ]
    for args, expected in cases:
        result = sage(gateway, *args)
        assert result.returncode != 0, args
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_port_taken_by_something_else_is_named(cli_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(cli_env["SAGE_GATEWAY_PORT"])))
        squatter.listen()
        result = sage(cli_env, "gateway", "start")
    assert result.returncode == 2
    assert f"port {cli_env['SAGE_GATEWAY_PORT']}" in result.stderr
    assert "Traceback" not in result.stderr


def test_gateway_that_cannot_start_says_why_in_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    not_a_directory = tmp_path / "home-is-a-file"
    not_a_directory.write_text("")
    result = sage({**cli_env, "SAGE_HOME": str(not_a_directory)}, "gateway", "run", timeout=60)
    assert result.returncode == 1
    assert "the gateway failed to start: NotADirectoryError" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_config_show_masks_secrets(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "SAGE_ADMIN_TOKEN": "admin-SENTINEL", "SAGE_API_KEYS": "key-SENTINEL"}
    result = sage(env, "config", "show")
    assert result.returncode == 0, result.stderr
    assert "SENTINEL" not in result.stdout
    config = json.loads(result.stdout)
    assert config["gateway"]["port"] == int(cli_env["SAGE_GATEWAY_PORT"])
    assert config["gateway"]["admin_tokens"] == ["********"]
