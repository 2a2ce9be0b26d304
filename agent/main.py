"""Run the agent's process: its API on hypercorn (asyncio or trio), sd_notify, signals.

``sage agent run`` calls :func:`run`; :func:`serve` is the async form (tests and
embedders can start it in their own task group); :func:`serve_api` serves the API of an
agent someone else runs (the gateway's local agent). ``python -m sage.unified.agent
[asyncio|trio]`` runs an agent configured from the environment (``SAGE_AGENT_*``,
``SAGE_HOME``) and TOML files.

systemd protocol: ``READY=1`` once the API listens *and* local state is reconciled
(adopted engines are not waited for to finish loading); ``WATCHDOG=1`` from the
event loop at half of ``WATCHDOG_USEC``, so a wedged loop trips the watchdog;
``STOPPING=1`` when a SIGTERM/SIGINT arrives.

On SIGTERM the agent stops reporting and exits, leaving engines running (they are
re-adopted by the next start; see ``systemd/sage-agent.service`` ``KillMode=process``)
unless ``stop_engines_on_exit`` is set.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import sys
from typing import Any

import anyio
import anyio.abc
import sniffio
from hypercorn.config import Config, Sockets

from sage.unified.agent.app import create_agent_app
from sage.unified.agent.sdnotify import notify, watchdog_interval_s
from sage.unified.agent.service import Agent
from sage.unified.agent.settings import AgentSettings
from sage.unified.sdk.config import ConfigFileError
from sage.unified.sdk.logsetup import configure_logging
from sage.unified.sdk.ports import (
    PortInUseError,
    check_port_free,
    find_port_in_use,
    port_error,
)

__all__ = ["PORT_HINT", "main", "run", "serve", "serve_api"]

log = logging.getLogger(__name__)

_LISTEN_WAIT_S = 30.0
PORT_HINT = "choose another port with --port (SAGE_AGENT_PORT)"


class _Config(Config):
    """hypercorn's configuration, with a listening socket bound before hypercorn starts
    and that no child process inherits.

    hypercorn marks its sockets inheritable for its worker processes; the agent has
    none, and an engine holding the agent's port kept a restarted agent from binding it.
    """

    _bound: Sockets | None = None

    def bind_now(self, host: str, port: int) -> None:
        """Bind the socket now (as hypercorn would): a taken port fails here, in one
        clear error, before anything waits for the API to listen (and would find another
        process's socket)."""
        address = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._bound = Sockets([], [sock], [])

    def close_unused(self) -> None:
        """Close a socket bound by :meth:`bind_now` that hypercorn never took."""
        if self._bound is not None:
            for sock in self._bound.insecure_sockets:
                sock.close()
            self._bound = None

    def create_sockets(self) -> Sockets:
        if self._bound is not None:
            sockets, self._bound = self._bound, None
            return sockets
        sockets = super().create_sockets()
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
            sock.set_inheritable(False)
        return sockets


def _hypercorn_config(settings: AgentSettings) -> _Config:
    config = _Config()
    host = settings.bind_host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Drains can take minutes; the keep-alive and graceful timeouts are for idle
    # connections only.
    config.graceful_timeout = 5.0
    config.keep_alive_timeout = 30.0
    return config


async def _wait_listening(host: str, port: int) -> None:
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    with anyio.fail_after(_LISTEN_WAIT_S):
        while True:
            try:
                stream = await anyio.connect_tcp(connect_host.strip("[]"), port)
            except OSError:
                await anyio.sleep(0.02)
                continue
            await stream.aclose()
            return


async def _watchdog(interval_s: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await anyio.sleep(interval_s / 2)


async def _signals(shutdown: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            shutdown.set()
            return


async def serve_api(
    agent: Agent,
    settings: AgentSettings,
    shutdown: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``agent``'s API with hypercorn (asyncio or trio) until ``shutdown`` is set.

    The one way the agent's API is served: by ``sage agent run`` and by a gateway for its
    local agent. ``task_status.started()`` is called once the API listens. After
    ``shutdown``, open requests get the graceful timeout (5 s), then are cancelled.

    Raises:
        PortInUseError: the port is taken (the message names the holder).
    """
    if shutdown.is_set():  # stopped before it started
        task_status.started()
        return
    config = _hypercorn_config(settings)
    try:
        config.bind_now(settings.bind_host, settings.port)
    except OSError as exc:
        describe = functools.partial(
            port_error, settings.bind_host, settings.port, exc, hint=PORT_HINT
        )
        raise await anyio.to_thread.run_sync(describe) from None
    app: Any = create_agent_app(agent)
    backend = sniffio.current_async_library()
    served = anyio.Event()

    async def serve_http() -> None:
        try:
            if backend == "trio":
                import hypercorn.trio

                await hypercorn.trio.serve(app, config, shutdown_trigger=shutdown.wait)
            else:
                import hypercorn.asyncio

                await hypercorn.asyncio.serve(app, config, shutdown_trigger=shutdown.wait)
        finally:
            served.set()
            shutdown.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_http)
            await _wait_listening(settings.bind_host, settings.port)
            task_status.started()
            await shutdown.wait()
            # hypercorn returns once the trigger fired and open requests finished.
            with anyio.move_on_after(config.graceful_timeout + 2):
                await served.wait()
            tg.cancel_scope.cancel()
    finally:
        config.close_unused()


async def serve(
    settings: AgentSettings,
    *,
    shutdown: anyio.Event | None = None,
    handle_signals: bool = True,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the agent and its API until SIGTERM/SIGINT (or ``shutdown`` is set).

    ``task_status.started()`` is called once the API listens and the agent has
    reconciled its state (the same moment ``READY=1`` goes to systemd).

    Raises:
        ValueError: the bind address is not loopback and no token is configured.
        PortInUseError: the port is taken (the message names the holder).
    """
    settings.check_bind_safety()
    stop = shutdown or anyio.Event()
    async with Agent(settings) as agent, anyio.create_task_group() as tg:
        if handle_signals:
            tg.start_soon(_signals, stop)
        api_done = anyio.Event()

        async def api(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                await serve_api(agent, settings, stop, task_status=task_status)
            finally:
                api_done.set()

        await tg.start(api)
        notify("READY=1")
        interval = watchdog_interval_s()
        if interval:
            tg.start_soon(_watchdog, interval)
        log.info(
            "agent %s listening on %s:%d (engines: %d)",
            settings.agent_id,
            settings.bind_host,
            settings.port,
            len(agent.engines()),
        )
        task_status.started()
        await stop.wait()
        notify("STOPPING=1")
        await api_done.wait()
        tg.cancel_scope.cancel()


def run(settings: AgentSettings, backend: str = "asyncio") -> int:
    """Run the agent until a signal (blocking). Returns the process exit status.

    Exit status 2 means the configuration was refused (e.g. an unsafe bind) or the
    port is taken.
    """
    try:
        settings.check_bind_safety()
    except ValueError as exc:
        print(f"sage agent: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {}
    if backend == "asyncio":
        try:
            import uvloop  # noqa: F401

            options["use_uvloop"] = True
        except ImportError:
            pass
    try:
        check_port_free(settings.bind_host, settings.port, hint=PORT_HINT)
        configure_logging(settings.log_level)
        anyio.run(serve, settings, backend=backend, backend_options=options)
    except (PortInUseError, BaseExceptionGroup) as exc:
        taken = find_port_in_use(exc)
        if taken is None:
            raise
        print(f"sage agent: {taken}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sage.unified.agent [asyncio|trio]``."""
    args = sys.argv[1:] if argv is None else argv
    backend = args[0] if args else "asyncio"
    if backend not in ("asyncio", "trio"):
        print("usage: python -m sage.unified.agent [asyncio|trio]", file=sys.stderr)
        return 2
    try:
        settings = AgentSettings()
    except ConfigFileError as exc:
        print(f"sage agent: {exc}", file=sys.stderr)
        return 2
    return run(settings, backend)


if __name__ == "__main__":
    raise SystemExit(main())
