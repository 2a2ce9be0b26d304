"""Listening, connection tracking, timeouts and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ._config import ServerConfig
from ._lifespan import Lifespan
from ._protocol import HttpConnection
from ._types import ASGIApp
from ._wire import error_response

__all__ = ["HttpServer", "ServerState"]

log = logging.getLogger("sage.unified.gateway")

_SWEEP_S = 0.5
"""How often idle and stalled connections are looked for. Timeouts are checked by one
sweep rather than a timer per request: arming and cancelling a timer on every request
measurably costs CPU on the hot path."""

_REFUSAL_LOG_EVERY_S = 60.0
"""Refused connections come in floods: one warning a minute, with the count."""


class ServerState:
    """What every connection of one server shares."""

    __slots__ = (
        "_idle",
        "_next_refusal_log",
        "app",
        "closing",
        "config",
        "connections",
        "loop",
        "refused_connections",
        "state",
        "tasks",
    )

    def __init__(self, app: ASGIApp, config: ServerConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.state: dict[str, Any] = {}
        """Lifespan state: the app fills it at startup, each request gets a shallow copy."""
        self._idle = asyncio.Event()
        self.refused_connections = 0
        """Connections answered 503 at ``max_connections`` since the server started."""
        self._next_refusal_log = 0.0

    def refusal(self) -> bytes:
        """Count one connection refused at ``max_connections``; the bytes to answer it."""
        self.refused_connections += 1
        limit = self.config.max_connections
        now = self.loop.time()
        if now >= self._next_refusal_log:
            self._next_refusal_log = now + _REFUSAL_LOG_EVERY_S
            log.warning(
                "%d client connections open (max_connections): refusing new ones "
                "(%d refused so far)",
                limit,
                self.refused_connections,
            )
        return error_response(
            503,
            f"the gateway has too many open connections ({limit}); retry shortly",
            "too_many_connections",
            error_type="service_unavailable",
            retry_after_s=1,
        )

    def idle_changed(self) -> None:
        if self.closing:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no connection remains (during shutdown)."""
        while self.connections:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), _SWEEP_S)
            except TimeoutError:
                pass


class HttpServer:
    """The gateway's HTTP/1.1 server: serves one ASGI app on one port (asyncio only).

    ::

        server = HttpServer(app, ServerConfig(host="127.0.0.1", port=8000))
        await server.serve()          # until server.should_exit = True

    or ``await server.start()`` … ``await server.shutdown()`` where the caller owns the
    lifetime (tests). ``start()`` runs the app's lifespan startup, then listens;
    ``shutdown()`` stops listening, closes idle connections, lets in-flight requests
    finish for up to ``graceful_shutdown_s``, aborts what is left, then runs the
    lifespan shutdown.

    Why not uvicorn: see ``gateway/server/_protocol.py`` and docs/performance.md.
    """

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.started = False
        self._should_exit = False
        self._exit: asyncio.Event | None = None
        self._state: ServerState | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._lifespan: Lifespan | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.port = config.port

    @property
    def connection_count(self) -> int:
        """Open client connections (idle keep-alive ones included)."""
        return len(self._state.connections) if self._state is not None else 0

    @property
    def refused_connections(self) -> int:
        """Connections refused at ``max_connections`` (answered 503) since ``start()``."""
        return self._state.refused_connections if self._state is not None else 0

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        """Setting it (from a signal handler in the loop's thread) ends ``serve()``."""
        self._should_exit = value
        if value and self._exit is not None:
            self._exit.set()

    async def serve(self) -> None:
        """Start (unless ``start()`` was awaited already), serve until ``should_exit`` is
        set, shut down gracefully.

        Raises:
            LifespanFailed: the app failed to start (nothing was bound).
            OSError: the address cannot be bound.
        """
        self._exit = asyncio.Event()
        if self._should_exit:
            await self.shutdown()
            return
        if not self.started:
            await self.start()
        try:
            await self._exit.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        self._state = state = ServerState(self.app, config, loop)
        if config.lifespan:
            self._lifespan = Lifespan(self.app, state.state)
            await self._lifespan.startup()
        try:
            server = await loop.create_server(
                lambda: HttpConnection(state),
                host=config.host,
                port=config.port,
                backlog=config.backlog,
                reuse_address=True,
            )
        except BaseException:
            if self._lifespan is not None:
                await self._lifespan.shutdown()
            raise
        self._servers.append(server)
        for sock in server.sockets:
            # (asyncio and uvloop both set TCP_NODELAY on accepted connections.)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self.port = sock.getsockname()[1]
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)
        self.started = True

    def _sweep(self) -> None:
        state = self._state
        if state is None:
            return
        try:
            now = state.loop.time()
            for conn in list(state.connections):
                conn.check_timeouts(now)
        except Exception:  # a bug here must not end the timeouts of every connection
            log.exception("connection timeout sweep failed")
        finally:
            self._sweeper = state.loop.call_later(_SWEEP_S, self._sweep)

    async def shutdown(self) -> None:
        """Stop gracefully (see the class docstring); idempotent."""
        state = self._state
        if state is None or state.closing:
            return
        state.closing = True
        for server in self._servers:
            server.close()
        for conn in list(state.connections):
            conn.shutdown()
        try:
            await asyncio.wait_for(state.wait_idle(), self.config.graceful_shutdown_s)
        except TimeoutError:
            log.warning(
                "%d connection(s) still busy after %.0f s of graceful shutdown; closing them",
                len(state.connections),
                self.config.graceful_shutdown_s,
            )
        for conn in list(state.connections):
            conn.abort()
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._lifespan is not None:
            await self._lifespan.shutdown()
        self.started = False
