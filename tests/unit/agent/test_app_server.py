"""main.serve(): hypercorn on the running backend (asyncio and trio), clean shutdown."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import httpx
import pytest

from sage.unified.agent.main import main, run, serve
from sage.unified.agent.settings import AgentSettings

pytestmark = pytest.mark.anyio


async def test_serve_listens_then_stops_on_shutdown(
    tmp_path: Path, free_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(
        "sage.unified.agent.main.notify", lambda message: sent.append(message) or True
    )
    settings = AgentSettings(
        sage_home=tmp_path, coordinator_url=None, port=free_tcp_port, token="t0ken"
    )
    shutdown = anyio.Event()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: serve(
                    settings, shutdown=shutdown, handle_signals=False, task_status=task_status
                )
            )
            assert sent == ["READY=1"]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_tcp_port}") as client:
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/readyz")).json()["status"] == "ready"
                denied = await client.post("/v1/engines", json={"model": "m"})
                assert denied.status_code == 401
                assert denied.json()["error"]["type"] == "authentication_error"
            shutdown.set()
    assert sent == ["READY=1", "STOPPING=1"]
    # The state file was written on the way out.
    assert (settings.state_dir / "agent-state.json").exists()


async def test_non_loopback_without_token_is_refused(tmp_path: Path) -> None:
    settings = AgentSettings(sage_home=tmp_path, coordinator_url=None, bind_host="0.0.0.0")
    with pytest.raises(ValueError, match="without a token"):
        await serve(settings, handle_signals=False)
    assert not (settings.state_dir / "agent-state.json").exists()


def test_main_rejects_unknown_backend() -> None:
    assert main(["curio"]) == 2


def test_a_taken_port_is_one_clear_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = AgentSettings(sage_home=tmp_path, coordinator_url=None, port=port)
        assert run(settings) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()} (" in err
    assert "--port" in err


def test_a_port_taken_after_the_check_is_one_line_and_never_said_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The holder binds between the check and hypercorn's bind: the agent must not take
    # the holder's socket for its own ("listening") nor end in task-group tracebacks.
    monkeypatch.setattr("sage.unified.agent.main.check_port_free", lambda *a, **k: None)
    monkeypatch.setattr("sage.unified.agent.main.configure_logging", lambda level: None)
    listening: list[str] = []
    monkeypatch.setattr("sage.unified.agent.main.notify", lambda m: listening.append(m) or True)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = AgentSettings(sage_home=tmp_path, coordinator_url=None, port=port)
        assert run(settings) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()} (" in err
    assert "READY=1" not in listening
