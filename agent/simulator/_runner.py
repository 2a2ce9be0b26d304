"""Process lifecycle of the simulator: start-up delay, listener, signals, shutdown.

Shutdown follows vLLM >= 0.18: on SIGTERM (or SIGINT) the listener closes at once,
requests arriving on open keep-alive connections get 503, in-flight requests may
finish for up to ``shutdown_timeout`` seconds, then the rest are aborted (a stream
ends with an in-band ``data: {"error": ...}`` event and no ``[DONE]``; a pending
non-streaming request gets a 500 body) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import zmq

from sage.unified.agent.simulator._config import SimulatorConfig, parse_args
from sage.unified.agent.simulator._connection import Connection
from sage.unified.agent.simulator._kv_publisher import KVEventPublisher
from sage.unified.agent.simulator._server import Simulator

__all__ = ["main", "run"]

_ABORT_GRACE_S = 2.0
_CHILD_CODE = "import time\nwhile True:\n    time.sleep(3600)\n"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional here
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _log(message: str) -> None:
    print(f"[sage-simulator pid={os.getpid()}] {message}", file=sys.stderr, flush=True)


class _Child:
    """The optional sleeping grandchild (``--spawn-child``), like vLLM's EngineCore."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        # Same process group as the simulator, so a group kill reaches it too.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _log(f"spawned child pid={self.proc.pid}")

    def kill_now(self) -> None:
        """SIGKILL without waiting (used just before ``os._exit``)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL; always reaped."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.proc = None


async def _sweep_idle(sim: Simulator, idle_s: float) -> None:
    """Close keep-alive connections idle for longer than ``idle_s`` (runs until cancelled)."""
    interval = min(1.0, idle_s / 4)
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        for conn in list(sim.connections):
            if conn.idle and now - conn.last_active > idle_s:
                conn.close()


async def _serve(config: SimulatorConfig, child: _Child) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if config.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    if config.startup_delay_s > 0:
        # Like vLLM, the port stays closed while the "model loads".
        _log(f"loading for {config.startup_delay_s} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.startup_delay_s)
        if stop.is_set():
            _log("stopped during start-up")
            return 0

    def crash() -> None:
        _log("crashing (exit 1)")
        child.kill_now()
        os._exit(1)

    publisher: KVEventPublisher | None = None
    events = config.kv_events
    if events is not None and events.publishes:
        try:
            publisher = KVEventPublisher(events)
        except zmq.ZMQError as exc:
            _log(f"kv events: cannot open {events.endpoint!r}: {exc}")
            return 1
        _log(f"kv events: publishing on {events.endpoint!r} topic {events.topic!r}")
    try:
        return await _serve_http(config, crash, publisher, stop)
    finally:
        if publisher is not None:
            publisher.close()


async def _serve_http(
    config: SimulatorConfig,
    crash: Callable[[], None],
    publisher: KVEventPublisher | None,
    stop: asyncio.Event,
) -> int:
    loop = asyncio.get_running_loop()
    sim = Simulator(config, on_crash=crash, publisher=publisher)
    server = await loop.create_server(
        lambda: Connection(sim), config.host, config.port, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1] if server.sockets else config.port
    _log(f"serving {config.served_name!r} ({config.kind}) on http://{config.host}:{port}")
    sweeper = loop.create_task(_sweep_idle(sim, config.keep_alive_timeout))
    try:
        await stop.wait()
        _log("shutting down")
        server.close()
        sim.draining = True
        if sim.inflight and config.shutdown_timeout > 0:
            await asyncio.wait(set(sim.inflight), timeout=config.shutdown_timeout)
        if sim.inflight:
            _log(f"aborting {len(sim.inflight)} in-flight request(s)")
            sim.aborting = True
            tasks = set(sim.inflight)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=_ABORT_GRACE_S)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        for conn in list(sim.connections):
            conn.close()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), _ABORT_GRACE_S)
    _log("stopped")
    return 0


def run(config: SimulatorConfig) -> int:
    """Run the simulator until SIGTERM/SIGINT; blocking.

    Installs signal handlers (SIGTERM is ignored with ``ignore_sigterm``), so call
    it from the main thread of a process of its own.

    Returns:
        The exit code: 0 after a clean shutdown, 1 when the KV events endpoint cannot
        be opened. ``--crash-after`` and ``POST /sim/crash`` end the process with
        ``os._exit(1)`` instead.

    Raises:
        OSError: the port cannot be bound.
    """
    child = _Child()
    if config.spawn_child:
        child.spawn()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(config, child))
    finally:
        child.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and :func:`run`; returns the exit code."""
    return run(parse_args(argv))
