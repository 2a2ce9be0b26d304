"""Launcher against real processes: start, log, wait, adopt, group termination."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path

import anyio
import psutil
import pytest

from sage.unified.agent.errors import LaunchError, RuntimeUnavailableError
from sage.unified.agent.launcher import ProcessRecord, adopt, launch
from sage.unified.agent.runtimes import LaunchPlan

pytestmark = pytest.mark.anyio

STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    print(f"grandchild {grandchild.pid}", flush=True)
    time.sleep(120)
    """
)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def _wait_for_text(path: Path, needle: str) -> str:
    with anyio.fail_after(20):
        while True:
            text = await anyio.to_thread.run_sync(_read, path)
            if needle in text:
                return text
            await anyio.sleep(0.05)


def _open_fds(pid: int) -> dict[int, str]:
    """What each descriptor of process ``pid`` points to (``socket:[inode]``, a path...)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    return {int(entry.name): os.readlink(entry) for entry in fd_dir.iterdir()}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_terminate_kills_group_that_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "e1.log"
    engine = await launch(LaunchPlan(argv=(sys.executable, "-c", STUBBORN)), log_path=log)
    try:
        text = await _wait_for_text(log, "grandchild ")
        grandchild = int(text.split("grandchild ")[1].split()[0])
        engine.refresh_tree()
        assert grandchild in {p.pid for p in engine.tree}
        assert engine.is_alive()
        with anyio.fail_after(20):
            await engine.terminate(grace_s=0.5)
        assert engine.returncode == -9
        assert not engine.is_alive()
        assert _gone(engine.record.pid)
        assert _gone(grandchild)
    finally:
        await engine.terminate(grace_s=0)


async def test_grandchild_outside_group_is_swept(tmp_path: Path) -> None:
    # A descendant that called setsid() escapes killpg; the recorded tree still gets it.
    script = STUBBORN.replace(
        "subprocess.Popen([", "subprocess.Popen(start_new_session=True, args=["
    )
    log = tmp_path / "e2.log"
    engine = await launch(LaunchPlan(argv=(sys.executable, "-c", script)), log_path=log)
    text = await _wait_for_text(log, "grandchild ")
    grandchild = int(text.split("grandchild ")[1].split()[0])
    engine.refresh_tree()
    with anyio.fail_after(20):
        await engine.terminate(grace_s=0.3)
    assert _gone(grandchild)


async def test_orphaned_group_member_is_killed_after_leader_exit(tmp_path: Path) -> None:
    # vLLM's API server can die and leave its EngineCore behind, before any tree snapshot.
    script = STUBBORN.replace("time.sleep(120)\n", "sys.exit(0)\n").replace(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ngrandchild", "grandchild"
    )
    assert "sys.exit(0)" in script
    log = tmp_path / "e.log"
    engine = await launch(LaunchPlan(argv=(sys.executable, "-c", script)), log_path=log)
    with anyio.fail_after(20):
        assert await engine.wait() == 0
    text = await _wait_for_text(log, "grandchild ")
    grandchild = int(text.split("grandchild ")[1].split()[0])
    assert not _gone(grandchild)
    with anyio.fail_after(20):
        await engine.terminate(grace_s=0.3)
    assert _gone(grandchild)


async def test_terminate_graceful_exit_reports_sigterm(tmp_path: Path) -> None:
    plan = LaunchPlan(
        argv=(sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)")
    )
    engine = await launch(plan, log_path=tmp_path / "e.log")
    await _wait_for_text(tmp_path / "e.log", "up")
    with anyio.fail_after(20):
        await engine.terminate(grace_s=10)
    assert engine.returncode == -15
    # Terminating again is harmless.
    await engine.terminate(grace_s=0.1)


async def test_wait_returns_exit_code_and_output_reaches_log(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text("earlier run\n")
    code = "import sys; print('to stdout'); sys.stderr.write('to stderr\\n'); sys.exit(3)"
    engine = await launch(LaunchPlan(argv=(sys.executable, "-c", code)), log_path=log)
    with anyio.fail_after(20):
        assert await engine.wait() == 3
    assert engine.returncode == 3
    assert not engine.is_alive()
    assert log.read_text().splitlines() == ["earlier run", "to stdout", "to stderr"]


async def test_child_env_has_plan_env_and_no_agent_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGE_AGENT_TOKEN", "s3cret")
    monkeypatch.setenv("SAGE_API_KEYS", "k1,k2")
    monkeypatch.setenv("SAGE_HOME", str(tmp_path))
    code = (
        "import os; print(os.environ.get('SAGE_AGENT_TOKEN'), os.environ.get('SAGE_API_KEYS'),"
        " os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('SAGE_HOME') is not None)"
    )
    plan = LaunchPlan(argv=(sys.executable, "-c", code), env={"CUDA_VISIBLE_DEVICES": "1,0"})
    engine = await launch(plan, log_path=tmp_path / "e.log")
    with anyio.fail_after(20):
        assert await engine.wait() == 0
    assert (tmp_path / "e.log").read_text().strip() == "None None 1,0 True"


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
async def test_engine_inherits_no_descriptor_of_the_agent(tmp_path: Path) -> None:
    # What hypercorn does to the agent's listening socket, and a pipe made inheritable:
    # neither may reach an engine, whatever the event loop (uvloop ignores close_fds).
    listener = socket.create_server(("127.0.0.1", 0))
    listener.set_inheritable(True)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    log = tmp_path / "e.log"
    plan = LaunchPlan(
        argv=(sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)")
    )
    engine = await launch(plan, log_path=log)
    try:
        await _wait_for_text(log, "up")
        assert _open_fds(engine.record.pid) == {0: "/dev/null", 1: str(log), 2: str(log)}
    finally:
        with anyio.fail_after(20):
            await engine.terminate(grace_s=5)
        listener.close()
        os.close(read_end)
        os.close(write_end)


async def test_missing_executable_is_runtime_unavailable(tmp_path: Path) -> None:
    plan = LaunchPlan(argv=("/nonexistent/bin/vllm", "serve", "m"))
    with pytest.raises(RuntimeUnavailableError, match="/nonexistent/bin/vllm"):
        await launch(plan, log_path=tmp_path / "e.log")


async def test_missing_cwd_is_launch_error_not_missing_runtime(tmp_path: Path) -> None:
    plan = LaunchPlan(argv=(sys.executable, "-c", "pass"))
    with pytest.raises(LaunchError, match="working directory") as info:
        await launch(plan, log_path=tmp_path / "e.log", cwd=tmp_path / "nope")
    assert not isinstance(info.value, RuntimeUnavailableError)


async def test_adopt_checks_create_time_and_waits(tmp_path: Path, processes) -> None:  # type: ignore[no-untyped-def]
    proc = processes.python("-c", "import time; time.sleep(60)")
    create_time = psutil.Process(proc.pid).create_time()
    record = ProcessRecord(pid=proc.pid, create_time=create_time, pgid=proc.pid)

    assert adopt(ProcessRecord(pid=proc.pid, create_time=create_time - 5, pgid=proc.pid)) is None
    engine = adopt(record)
    assert engine is not None
    assert engine.is_alive()
    assert engine.returncode is None

    async with anyio.create_task_group() as tg:
        results: list[int] = []

        async def waiter() -> None:
            results.append(await engine.wait())

        tg.start_soon(waiter)
        await anyio.sleep(0.2)
        assert results == []
        with anyio.fail_after(20):
            await engine.terminate(grace_s=2)
    # The process is the test's child, so it stays a zombie until reaped: counts as exited.
    assert results == [-1]
    assert engine.returncode == -1
    assert not engine.is_alive()
    assert adopt(record) is None


async def test_adopt_unknown_pid_is_none() -> None:
    assert adopt(ProcessRecord(pid=2**22 + 12345, create_time=0.0, pgid=1)) is None
