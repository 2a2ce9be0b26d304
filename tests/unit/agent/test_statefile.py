"""The agent state file: round trip, atomic replacement, unreadable files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sage.unified.agent.statefile import AgentState, EngineRecord, StateFile, StateFileError
from sage.unified.sdk.models import EngineSpec, Runtime, SimulatorOptions
from sage.unified.sdk.states import EngineState


def _state() -> AgentState:
    spec = EngineSpec(
        model="Qwen/Qwen2.5-0.5B",
        served_model_name="qwen",
        runtime=Runtime.SIMULATED,
        simulator=SimulatorOptions(ttft_ms=5),
        startup_timeout_s=60,
    )
    return AgentState(
        agent_id="host-a",
        saved_at=1.5,
        engines=[
            EngineRecord(
                engine_id="qwen-1a2b3c",
                spec=spec,
                port=8901,
                gpu_ids=[0, 1],
                incarnation=2,
                created_at=10.0,
                restarts=2,
                state=EngineState.READY,
                reason="health checks passed",
                pid=4242,
                pid_create_time=123.25,
                pgid=4242,
            ),
            EngineRecord(engine_id="old-000000", spec=spec, port=8902, state=EngineState.STOPPED),
        ],
    )


def test_round_trip(tmp_path: Path) -> None:
    sf = StateFile.in_dir(tmp_path / "agent")
    assert sf.load() == AgentState()  # absent file: empty state
    state = _state()
    sf.write(state)
    loaded = StateFile.in_dir(tmp_path / "agent").load()
    assert loaded == state
    assert loaded.engines[0].spec.simulator == SimulatorOptions(ttft_ms=5)
    assert oct(os.stat(sf.path).st_mode & 0o777) == "0o600"


@pytest.mark.anyio
async def test_async_save_replaces_atomically(tmp_path: Path) -> None:
    sf = StateFile.in_dir(tmp_path)
    await sf.save(_state())
    first_inode = os.stat(sf.path).st_ino
    newer = _state()
    newer.engines[0].incarnation = 3
    await sf.save(newer)
    # os.replace swaps in a new file: a reader holding the old one never sees a torn write.
    assert os.stat(sf.path).st_ino != first_inode
    assert sf.load().engines[0].incarnation == 3
    assert os.listdir(tmp_path) == [sf.path.name]  # no temp files left


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf = StateFile.in_dir(tmp_path)
    sf.write(_state())
    before = sf.path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        sf.write(AgentState(agent_id="other"))
    monkeypatch.undo()
    assert sf.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [sf.path.name]


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"version": 99}', b'{"engines": [{"port": "x"}]}']
)
def test_unreadable_file_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    sf = StateFile.in_dir(tmp_path)
    sf.path.write_bytes(content)
    with pytest.raises(StateFileError, match="moved to"):
        sf.load()
    assert not sf.path.exists()
    aside = list(tmp_path.glob("*.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert sf.load() == AgentState()
