"""The agent's state file: what it needs to re-adopt its engines after a restart.

An agent restart (crash, ``kill -9``, upgrade) must not restart engines: they keep
serving while the agent is away, and the new agent finds them again from this file.
Per engine it keeps the launch spec, the id, how to recognise the process (pid +
process start time + process group, so a reused pid is never mistaken for the
engine), the port and GPUs it holds, its incarnation, restart count and last state.
Per GPU it keeps a quarantine (fault and since when) until an operator clears it.

The file is JSON, written atomically (temporary file in the same directory, fsync,
``os.replace``, fsync of the directory), so a reader sees either the old or the new
content, never a torn write. :meth:`StateFile.save` runs the blocking write in a
worker thread and serialises concurrent saves; the latest snapshot always wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from sage.unified.agent.quarantine import GpuHealthRecord
from sage.unified.sdk.models import EngineSpec
from sage.unified.sdk.states import EngineState

__all__ = ["STATE_FILE_NAME", "AgentState", "EngineRecord", "StateFile", "StateFileError"]

STATE_FILE_NAME = "agent-state.json"
_FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class StateFileError(Exception):
    """Raised by :meth:`StateFile.load` when the file exists but cannot be used.

    The unreadable file is moved aside (``<name>.corrupt-<n>``) first, so a later
    start does not trip over it again and an operator can inspect it.
    """


class EngineRecord(msgspec.Struct, kw_only=True):
    """One engine as persisted. ``pid`` is ``None`` when no process is running."""

    engine_id: str
    spec: EngineSpec
    port: int
    gpu_ids: list[int] = msgspec.field(default_factory=list)
    incarnation: int = 0
    created_at: float = 0.0
    restarts: int = 0
    state: EngineState = EngineState.STARTING
    reason: str = ""
    state_changed_at: float = 0.0
    pid: int | None = None
    pid_create_time: float | None = None
    """``psutil.Process(pid).create_time()`` at launch; guards against pid reuse."""
    pgid: int | None = None


class AgentState(msgspec.Struct, kw_only=True):
    """The whole file."""

    version: int = _FORMAT_VERSION
    agent_id: str = ""
    saved_at: float = 0.0
    engines: list[EngineRecord] = msgspec.field(default_factory=list)
    gpu_health: list[GpuHealthRecord] = msgspec.field(default_factory=list)
    """Quarantined GPUs and the counters acknowledged at their last clear."""


_encoder = msgspec.json.Encoder()


class StateFile:
    """Atomic JSON persistence of :class:`AgentState` at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = anyio.Lock()

    @classmethod
    def in_dir(cls, state_dir: Path) -> StateFile:
        """The state file inside the agent's state directory."""
        return cls(state_dir / STATE_FILE_NAME)

    def load(self) -> AgentState:
        """Read the file; an absent file is an empty state.

        Blocking (small file, read once at start-up before anything else runs).

        Raises:
            StateFileError: the file is not valid JSON of the expected shape or has an
                unknown format version; it has been moved aside.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        try:
            state = msgspec.json.decode(data, type=AgentState)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            aside = self._move_aside()
            raise StateFileError(
                f"state file {self.path} is unreadable ({exc}); moved to {aside}"
            ) from exc
        if state.version != _FORMAT_VERSION:
            aside = self._move_aside()
            raise StateFileError(
                f"state file {self.path} has format version {state.version}, expected "
                f"{_FORMAT_VERSION}; moved to {aside}"
            )
        return state

    def write(self, state: AgentState) -> None:
        """Write ``state`` atomically (blocking; use :meth:`save` from async code)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = _encoder.encode(state)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # The rename itself is durable only once the directory entry is on disk.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def save(self, state: AgentState) -> None:
        """Write ``state`` atomically in a worker thread.

        Saves are serialised, so two concurrent calls never interleave their
        temporary files. Cancellation: the thread finishes its write (shielded), so
        the file is never left half-renamed.

        Raises:
            OSError: the directory is not writable or the disk is full.
        """
        async with self._lock:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.write, state)

    def _move_aside(self) -> Path:
        for n in range(1, 1000):
            aside = self.path.with_name(f"{self.path.name}.corrupt-{n}")
            if not aside.exists():
                break
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            log.warning("could not move the unreadable state file aside: %s", exc)
        return aside
