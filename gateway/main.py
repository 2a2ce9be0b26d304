"""Run a gateway's process: the gateway's own HTTP server (``gateway.server``, uvloop +
httptools) serving the gateway app, plus, in embedded mode, the local agent and its API on
a second listener (served as ``sage agent run`` serves it: :func:`agent.main.serve_api`).

Signals:

- SIGTERM / SIGINT: stop accepting connections, let in-flight requests finish for up to
  ``graceful_shutdown_s``, exit. The local agent's engines keep running and the next
  start adopts them (what ``systemctl restart`` and ``sage gateway restart`` want).
- SIGUSR1: the same, and stop the local agent's engines first (``sage gateway stop``:
  nothing is left behind). A signal rather than an API call, so it needs no token and
  only the process's owner can send it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import sys
from typing import Any

import anyio

from sage.unified.gateway.app import GatewayRuntime, create_gateway_app, fast_path
from sage.unified.gateway.server import (
    HttpServer,
    LifespanFailed,
    ServerConfig,
    connection_cap,
    raise_open_file_limit,
)
from sage.unified.gateway.settings import GatewaySettings
from sage.unified.sdk.logsetup import configure_logging
from sage.unified.sdk.ports import PortInUseError, check_port_free, find_port_in_use, port_error

__all__ = [
    "AGENT_PORT_HINT",
    "GATEWAY_PORT_HINT",
    "GatewayStartError",
    "PortInUseError",
    "check_ports_free",
    "run",
]

log = logging.getLogger("sage.unified.gateway")


class GatewayStartError(RuntimeError):
    """The gateway app could not start (its runtime raised during startup)."""


GATEWAY_PORT_HINT = "choose another port with --port (SAGE_GATEWAY_PORT)"
AGENT_PORT_HINT = (
    "choose another port for the local agent with --agent-port (SAGE_GATEWAY_AGENT_PORT), "
    "or run without it (--no-local-agent)"
)


def check_ports_free(settings: GatewaySettings) -> None:
    """Refuse, naming the holder, when the gateway's port or its local agent's is taken.

    Blocking (psutil, see :mod:`sage.unified.sdk.ports`): call it off the event loop.

    Raises:
        PortInUseError: one line naming the port, its holder and the flag to change it.
    """
    check_port_free(settings.host, settings.port, hint=GATEWAY_PORT_HINT)
    if settings.mode == "embedded" and settings.local_agent:
        check_port_free("127.0.0.1", settings.agent_port, hint=AGENT_PORT_HINT)


def _server_config(settings: GatewaySettings, open_files: int | None) -> ServerConfig:
    """The HTTP server's config; ``open_files`` (the soft open-file limit) caps the
    connections."""
    max_connections = connection_cap(settings.max_connections, open_files)
    if max_connections < settings.max_connections:
        # Said louder when the operator asked for the higher number.
        level = logging.WARNING if "max_connections" in settings.model_fields_set else logging.INFO
        log.log(
            level,
            "max_connections lowered from %d to %d: the open-file limit is %s",
            settings.max_connections,
            max_connections,
            open_files,
        )
    return ServerConfig(
        host=settings.host,
        port=settings.port,
        backlog=2048,
        keep_alive_s=settings.keep_alive_s,
        request_timeout_s=settings.request_timeout_s,
        head_timeout_s=settings.head_timeout_s,
        min_body_rate_bytes_s=settings.min_body_rate_bytes_s,
        max_connections=max_connections,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        graceful_shutdown_s=settings.graceful_shutdown_s,
        access_log=settings.access_log,
    )


async def serve(settings: GatewaySettings, *, stop_engines_on_exit: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (asyncio only: the data plane is asyncio-native)."""
    settings.check_bind_safety()
    await anyio.to_thread.run_sync(check_ports_free, settings)
    embedded_agent = settings.mode == "embedded" and settings.local_agent
    runtime = GatewayRuntime(settings)
    runtime.local_agent_pending = embedded_agent
    app = fast_path(create_gateway_app(runtime=runtime), runtime)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector, whose full passes over it paused the event loop for 20-30 ms (the p99
    # of a loaded gateway) and cost about 1 µs per request.
    gc.collect()
    gc.freeze()
    gateway_server = HttpServer(app, _server_config(settings, raise_open_file_limit()))
    runtime.metrics.client_connections = lambda: gateway_server.connection_count
    runtime.metrics.connections_refused = lambda: gateway_server.refused_connections
    agent_shutdown = anyio.Event()

    loop = asyncio.get_running_loop()
    stop_engines = [stop_engines_on_exit]

    def _stop() -> None:
        gateway_server.should_exit = True
        agent_shutdown.set()

    def _stop_with_engines() -> None:
        stop_engines[0] = True
        _stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop)
    loop.add_signal_handler(signal.SIGUSR1, _stop_with_engines)
    try:
        try:
            # Started here rather than in the task group so that a failure is one clear
            # error, not an exception group.
            await gateway_server.start()
        except LifespanFailed as exc:
            raise GatewayStartError(f"the gateway failed to start: {exc}") from None
        except OSError as exc:  # taken between the check above and the bind
            describe = functools.partial(
                port_error, settings.host, settings.port, exc, hint=GATEWAY_PORT_HINT
            )
            raise await anyio.to_thread.run_sync(describe) from None
        async with anyio.create_task_group() as tg:
            tg.start_soon(gateway_server.serve)
            log.info("gateway listening on http://%s:%d", settings.host, gateway_server.port)
            if embedded_agent:
                await _run_local_agent(settings, runtime, agent_shutdown, stop_engines)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)


async def _run_local_agent(
    settings: GatewaySettings,
    runtime: GatewayRuntime,
    shutdown: anyio.Event,
    stop_engines: list[bool],
) -> None:
    # Imported here: a gateway in remote or static mode never loads agent code (or NVML).
    from sage.unified.agent.main import serve_api
    from sage.unified.agent.service import Agent
    from sage.unified.agent.settings import AgentSettings

    agent_token = settings.local_agent_token()
    overrides: dict[str, Any] = {
        "coordinator_url": settings.url,
        "port": settings.agent_port,
        "bind_host": "127.0.0.1",
        "sage_home": settings.sage_home,
    }
    if agent_token:
        overrides["token"] = agent_token
    agent_settings = AgentSettings(**overrides)
    async with Agent(agent_settings) as agent:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_api, agent, agent_settings, shutdown)
            await _until_registered(runtime, agent_settings.agent_id, shutdown)
        if stop_engines[0]:
            await agent.stop_all()


async def _until_registered(runtime: GatewayRuntime, agent_id: str, shutdown: anyio.Event) -> None:
    """Keep ``/readyz`` at 503 until the coordinator knows the local agent (which already
    listens), so a caller that waited for readiness can start an engine at once."""
    coordinator = runtime.coordinator
    while not shutdown.is_set():
        # The coordinator's registry has no per-agent event; it turns true within
        # milliseconds of the agent's first report.
        if coordinator is None or any(a.agent_id == agent_id for a in coordinator.agents()):
            if coordinator is not None:
                runtime.ready_revision = coordinator.revision
            runtime.local_agent_pending = False
            return
        await anyio.sleep(0.05)


def run(settings: GatewaySettings, *, stop_engines_on_exit: bool = False) -> int:
    """Run a gateway in the foreground; returns the exit code.

    Args:
        settings: configuration.
        stop_engines_on_exit: stop the local agent's engines when the gateway stops
            (``sage gateway stop``); otherwise they keep running and are adopted by the
            next gateway start (``sage gateway restart``).
    """
    configure_logging(
        settings.log_level,
        log_file=settings.log_file,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        runner(serve(settings, stop_engines_on_exit=stop_engines_on_exit))
    except (PortInUseError, BaseExceptionGroup) as exc:
        # The local agent's port, taken after the check, fails inside a task group.
        taken = find_port_in_use(exc)
        if taken is None:
            raise
        print(f"error: {taken}", file=sys.stderr)
        return 2
    except GatewayStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
