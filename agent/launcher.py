"""Start, adopt and stop engine processes (anyio: asyncio and trio).

Each engine runs in its own session and process group (``start_new_session``), so
one ``killpg`` reaches the API server and its workers (vLLM's ``EngineCore`` and
``Worker`` children). Its stdout and stderr go straight to its log file.

No descriptor of the agent reaches an engine: the child is started by
``subprocess.Popen`` with ``close_fds=True``, which closes every descriptor above
stderr, inheritable or not. ``anyio.open_process`` is not used for this because under
uvloop it ends in libuv's ``uv_spawn``, which ignores ``close_fds``: the agent's
listening socket (hypercorn marks it inheritable for its worker processes) then
lived on in every engine, and a restarted agent could not bind its port while any
engine ran. The exit is awaited through a pidfd (Linux 5.3+; polled otherwise), the
same way trio waits for its own children.

Stopping follows the recipe verified in research/ecosystem.md §1.3: SIGTERM to the
group, wait up to the grace period, SIGKILL the group, then kill any survivor of
the recorded process tree (a child that left the group with ``setsid`` would
otherwise keep its port or GPU memory). The group is signalled even after its
leader died (workers orphaned by a crashed API server): Linux never reuses a pid
while a process group of that id exists, so such a group is still the engine's. Every psutil handle carries the process's
create time, so a reused pid is never signalled.

The agent persists :class:`ProcessRecord` so a restarted agent can :func:`adopt`
engines that outlived it.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import psutil

from sage.unified.agent.errors import LaunchError, RuntimeUnavailableError
from sage.unified.agent.logfiles import open_engine_log
from sage.unified.agent.runtimes import LaunchPlan

__all__ = [
    "ChildProcess",
    "EngineProcess",
    "ProcessRecord",
    "adopt",
    "child_environment",
    "launch",
]

_ADOPT_POLL_S = 0.5
_EXIT_POLL_S = 0.1
"""How often a child's exit is polled where no pidfd can be opened."""
_CREATE_TIME_TOLERANCE_S = 0.05
_SECRET_ENV = re.compile(r"^SAGE_.*(TOKEN|KEY|SECRET|PASSWORD)", re.IGNORECASE)


@dataclass(frozen=True)
class ProcessRecord:
    """What identifies an engine process across agent restarts."""

    pid: int
    create_time: float
    """``psutil.Process.create_time()``; guards against pid reuse."""
    pgid: int


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment without its secrets (``SAGE_*TOKEN*``, ``SAGE_API_KEYS``,
    ``SAGE_*SECRET*``...), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not _SECRET_ENV.match(k)}
    env.update(extra)
    return env


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie; ``is_running`` also checks the create time."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def _poll_until(done: Callable[[], bool], interval_s: float = 0.1) -> None:
    # Processes that are not our children give no event to wait on; poll /proc. The check
    # can scan every process on the host (psutil), so it runs off the event loop.
    while True:
        if await anyio.to_thread.run_sync(done):
            return
        await anyio.sleep(interval_s)


class ChildProcess:
    """A process this agent spawned, whose exit it can await (asyncio and trio).

    Created by :func:`launch`. Only this object reaps the child (``waitpid`` on its
    pid, never ``-1``), so the event loop's own child watchers are not involved.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._pidfd: int | None
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # not Linux, or a kernel older than 5.3
            self._pidfd = None
        self._waiting = anyio.Lock()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped (negative: killed by that signal), else ``None``."""
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the exit, reap the child and return its status.

        Several tasks may wait at once. Cancelling a wait leaves the process running.
        """
        while (code := self._popen.poll()) is None:
            # One task at a time watches the pidfd: both anyio backends refuse two
            # waiters on one descriptor.
            async with self._waiting:
                if self._popen.poll() is not None:
                    continue
                if self._pidfd is not None:
                    await anyio.wait_readable(self._pidfd)
                else:
                    await anyio.sleep(_EXIT_POLL_S)
        self._close_pidfd()
        return code

    async def aclose(self) -> None:
        """Release the pidfd (the process itself is left alone)."""
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            os.close(fd)


class EngineProcess:
    """One engine process: either our child or adopted from a previous agent run.

    Create it with :func:`launch` or :func:`adopt`.
    """

    def __init__(
        self,
        record: ProcessRecord,
        *,
        process: ChildProcess | None = None,
        handle: psutil.Process | None = None,
    ) -> None:
        self.record = record
        self._process = process
        self._handle = handle
        self._returncode: int | None = None
        self._tree: dict[tuple[int, float], psutil.Process] = {}

    @property
    def adopted(self) -> bool:
        """Whether the process came from :func:`adopt` (not our child)."""
        return self._process is None

    @property
    def returncode(self) -> int | None:
        """Exit status once known (negative: killed by that signal; ``-1`` for an adopted
        process, whose status only its real parent sees); ``None`` while running."""
        if self._process is not None:
            return self._process.returncode
        return self._returncode

    async def wait(self) -> int:
        """Wait until the process exits and return its exit status.

        Our child is reaped. An adopted process is polled every 0.5 s (pid and create
        time) and gives ``-1``. Cancelling the wait leaves the process running.
        """
        if self._process is not None:
            code = await self._process.wait()
            await self._close_transport()
            return code
        if self._returncode is None:
            await _poll_until(
                lambda: self._handle is None or not _alive(self._handle), _ADOPT_POLL_S
            )
            self._returncode = -1
        return self._returncode

    async def _close_transport(self) -> None:
        if self._process is not None:
            await self._process.aclose()

    def is_alive(self) -> bool:
        """Whether the main process is still running (a zombie counts as exited)."""
        if self.returncode is not None:
            return False
        if self._handle is None:
            return False
        return _alive(self._handle)

    def status(self) -> str | None:
        """psutil's status of the main process (``"sleeping"``, ``"stopped"`` after a
        SIGSTOP, ``"zombie"``...); ``None`` once it is gone. Reads ``/proc``."""
        if self._handle is None or self.returncode is not None:
            return None
        try:
            return str(self._handle.status())
        except psutil.Error:
            return None

    def refresh_tree(self) -> None:
        """Remember the current descendants, for the sweep in :meth:`terminate`.

        Call it after start-up and now and then (vLLM spawns its workers late).
        Exited descendants are forgotten. Never raises for a dead process. It reads
        ``/proc`` for every process, so callers on an event loop run it in a worker
        thread; the new tree replaces the old one in one assignment, so a reader on the
        loop never sees it half-built.
        """
        tree = {key: proc for key, proc in list(self._tree.items()) if _alive(proc)}
        if self._handle is not None:
            try:
                children = self._handle.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    tree[(child.pid, child.create_time())] = child
                except psutil.Error:
                    continue
        self._tree = tree

    @property
    def tree(self) -> list[psutil.Process]:
        """The descendants recorded by :meth:`refresh_tree`."""
        return list(self._tree.values())

    def _group_is_ours(self) -> bool:
        """Whether ``record.pgid`` still names the engine's process group.

        Linux does not hand out a pid while a process group of that id exists, so
        while the leader (pid == pgid) is gone every process left in the group is
        one the engine started: killing the group is safe and catches workers the
        tree snapshot missed. A live process with the leader's pid but another
        create time means the id was reused: then only the recorded tree is used.
        """
        pgid = self.record.pgid
        if pgid != self.record.pid:
            # Not a session leader we started: trust only members we know.
            members = [p for p in (self._handle, *self._tree.values()) if p is not None]
            for proc in members:
                try:
                    if _alive(proc) and os.getpgid(proc.pid) == pgid:
                        return True
                except OSError:
                    continue
            return False
        try:
            create_time = psutil.Process(pgid).create_time()
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
        return bool(abs(create_time - self.record.create_time) <= _CREATE_TIME_TOLERANCE_S)

    def _signal_group(self, signum: int) -> None:
        if self._group_is_ours():
            try:
                os.killpg(self.record.pgid, signum)
            except (ProcessLookupError, PermissionError):
                return

    def _group_alive(self) -> bool:
        """Whether any non-zombie process is left in the engine's process group."""
        if not self._group_is_ours():
            return False
        try:
            os.killpg(self.record.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        if self._handle is not None and _alive(self._handle):
            return True
        # The leader is gone or a zombie nobody reaped yet (killpg(0) counts zombies):
        # look for live members, e.g. workers orphaned when the API server died.
        for proc in psutil.process_iter(["status"]):
            try:
                if (
                    proc.info["status"] != psutil.STATUS_ZOMBIE
                    and os.getpgid(proc.pid) == self.record.pgid
                ):
                    return True
            except OSError:
                continue
        return False

    def _signal_tree(self, signum: int) -> None:
        procs = [p for p in (self._handle, *self._tree.values()) if p is not None]
        for proc in procs:
            try:
                if _alive(proc):
                    proc.send_signal(signum)
            except psutil.Error:
                continue

    def _any_alive(self) -> bool:
        procs = [p for p in (self._handle, *self._tree.values()) if p is not None]
        return any(_alive(p) for p in procs)

    async def terminate(self, grace_s: float) -> None:
        """Stop the engine and everything it started.

        SIGTERM to the process group and the recorded tree; wait up to ``grace_s``
        for all of them to exit; then SIGKILL the group and any survivor, and reap
        our child. Never raises for processes that are already gone.

        Cancellation: if cancelled during the grace wait, the group is killed with
        SIGKILL before the cancellation propagates.
        """
        self.refresh_tree()
        self._signal_group(signal.SIGTERM)
        self._signal_tree(signal.SIGTERM)
        try:
            with anyio.move_on_after(max(grace_s, 0.0)):
                if self._process is not None:
                    await self._process.wait()
                await _poll_until(lambda: not self._any_alive() and not self._group_alive())
        finally:
            with anyio.CancelScope(shield=True):
                await self._kill_survivors()

    async def _kill_survivors(self) -> None:
        if self._any_alive() or self._group_alive():
            self._signal_group(signal.SIGKILL)
            self._signal_tree(signal.SIGKILL)
        survivors = [p for p in self._tree.values() if _alive(p)]
        if survivors:
            await anyio.to_thread.run_sync(lambda: psutil.wait_procs(survivors, timeout=5.0))
        if self._process is not None:
            with anyio.move_on_after(10.0):
                await self._process.wait()
            await self._close_transport()
        else:
            with anyio.move_on_after(5.0):
                await _poll_until(lambda: self._handle is None or not _alive(self._handle))
            if self._handle is not None and not _alive(self._handle):
                self._returncode = -1


async def launch(plan: LaunchPlan, *, log_path: Path, cwd: Path | None = None) -> EngineProcess:
    """Start ``plan.argv`` in a new session with its output appended to ``log_path``.

    The child gets no stdin, the agent's environment without its secrets plus
    ``plan.env``, its own process group, and no other descriptor of the agent (only
    stdin, stdout and stderr are open when it starts).

    Cancellation: the spawn itself finishes (milliseconds), so a started child is
    never lost; the cancellation is raised afterwards.

    Raises:
        RuntimeUnavailableError: the executable does not exist or cannot be executed.
        LaunchError: any other reason the process could not be started (e.g. ``cwd``
            does not exist).
    """
    executable = plan.argv[0]
    fd = await anyio.to_thread.run_sync(open_engine_log, log_path)
    env = child_environment(plan.env)

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(plan.argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            pass_fds=(),
        )

    try:
        with anyio.CancelScope(shield=True):
            popen = await anyio.to_thread.run_sync(spawn)
    except FileNotFoundError as exc:
        if cwd is not None and exc.filename is not None and Path(exc.filename) == Path(cwd):
            raise LaunchError(
                f"cannot start the engine: working directory {str(cwd)!r} does not exist"
            ) from exc
        raise RuntimeUnavailableError(
            f"cannot start the engine: executable {executable!r} was not found; install the "
            "runtime or point the agent at it (SAGE_AGENT_VLLM_EXECUTABLE, "
            "SAGE_AGENT_SGLANG_PYTHON)"
        ) from exc
    except PermissionError as exc:
        raise RuntimeUnavailableError(
            f"cannot start the engine: {executable!r} is not executable ({exc.strerror})"
        ) from exc
    except OSError as exc:
        raise LaunchError(f"cannot start the engine {executable!r}: {exc}") from exc
    finally:
        os.close(fd)
    process = ChildProcess(popen)
    pid = process.pid
    handle: psutil.Process | None
    try:
        handle = psutil.Process(pid)
        create_time = handle.create_time()
    except psutil.Error:
        handle = None
        create_time = math.nan
    engine = EngineProcess(
        ProcessRecord(pid=pid, create_time=create_time, pgid=pid), process=process, handle=handle
    )
    return engine


def adopt(record: ProcessRecord) -> EngineProcess | None:
    """Take over an engine started by an earlier agent run.

    Returns ``None`` unless a live (non-zombie) process with ``record.pid`` exists
    and its create time matches ``record.create_time`` within 0.05 s, which rules
    out a pid reused by an unrelated program.
    """
    try:
        handle = psutil.Process(record.pid)
        create_time = handle.create_time()
    except psutil.Error:
        return None
    if abs(create_time - record.create_time) > _CREATE_TIME_TOLERANCE_S or not _alive(handle):
        return None
    engine = EngineProcess(record, handle=handle)
    engine.refresh_tree()
    return engine
