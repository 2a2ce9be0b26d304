"""The keep-alive connection pool and the request entry point."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ._connection import UpstreamConnection
from ._errors import (
    PoolClosed,
    PoolTimeout,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    _StaleConnection,
)
from ._request import Origin, build_request_head, host_header, normalise_origin
from ._response import UpstreamResponse

__all__ = ["OriginStats", "UpstreamPool"]


class _Default:
    """Sentinel type: "use the pool's setting" (``None`` already means "no timeout")."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()


@dataclass(frozen=True, slots=True)
class OriginStats:
    """Connection counts of one origin, for metrics.

    Attributes:
        origin: ``(scheme, host, port)``.
        open: connections counted against the limit (connecting, busy or idle).
        idle: connections parked in the keep-alive pool (some may have expired
            and wait for the next sweep).
        busy: ``open - idle``: in use by a request, or connecting.
        waiting: requests queued for a free slot.
    """

    origin: Origin
    open: int
    idle: int
    busy: int
    waiting: int


class _OriginPool:
    """Connections to one origin: a LIFO idle stack, a slot count, a FIFO wait queue."""

    __slots__ = ("conns", "host", "idle", "open", "origin", "pool", "waiters")

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.host = host_header(origin)
        # LIFO reuse from the right keeps few connections warm; the oldest sit
        # on the left where the sweep finds expired ones without a full scan.
        self.idle: deque[UpstreamConnection] = deque()
        self.open = 0
        # Every live connection, busy or idle, so aclose() reaches all of them
        # (touched per connection, not per request).
        self.conns: set[UpstreamConnection] = set()
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        idle = self.idle
        if idle and not fresh:
            now = self.pool._loop.time()
            while idle:
                conn = idle.pop()
                if conn.expires_at > now and conn.usable:
                    conn.reused = True
                    return conn
                # Expired or closed by the server while idle: the slot is ours now.
                self.open -= 1
                self._drop(conn)
        if self.pool._closed:
            raise PoolClosed("upstream pool is closed")
        if self.open < self.pool._max:
            self.open += 1
            return await self._connect()
        return await self._wait_for_slot()

    async def _connect(self) -> UpstreamConnection:
        """Open a connection in a slot already counted in ``open``."""
        pool = self.pool
        loop = pool._loop
        conn = UpstreamConnection(
            loop, read_high=pool._read_high, read_idle_timeout_s=pool._read_idle_timeout_s
        )
        scheme, host, port = self.origin
        tls = pool.ssl_context if scheme == "https" else None
        try:
            async with asyncio.timeout(pool._connect_timeout_s):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError as exc:
            self._slot_freed()
            raise UpstreamConnectTimeout(
                f"connect to {host}:{port} timed out after {pool._connect_timeout_s} s"
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS (socket.gaierror)
            self._slot_freed()
            raise UpstreamConnectError(f"connect to {host}:{port} failed: {exc}") from exc
        except BaseException:
            self._slot_freed()
            raise
        if pool._closed:  # closed while we were connecting
            conn.abort()
            self._slot_freed()
            raise PoolClosed("upstream pool is closed")
        self.conns.add(conn)
        return conn

    async def _wait_for_slot(self) -> UpstreamConnection:
        pool = self.pool
        loop = pool._loop
        fut: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        self.waiters.append(fut)
        timer = loop.call_later(pool._connect_timeout_s, _expire_waiter, fut, self.origin)
        try:
            conn = await fut
        except asyncio.CancelledError:
            # Handed a connection or a slot in the same tick we were cancelled:
            # give it back so nothing leaks.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()
                if handed is None:
                    self._slot_freed()
                elif handed.usable and not self.pool._closed:
                    self._hand_over(handed)
                else:
                    self.discard(handed)
            raise
        finally:
            timer.cancel()
        if conn is None:  # a slot (not a connection) was handed over
            return await self._connect()
        conn.reused = True
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Take a connection back after its response: park it, hand it on, or close it."""
        if not conn.reusable or self.pool._closed:
            self.discard(conn)
            return
        conn.reset_idle()
        self._hand_over(conn)

    def _hand_over(self, conn: UpstreamConnection) -> None:
        """Give an idle, usable connection to the first live waiter, or park it."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        pool = self.pool
        conn.expires_at = pool._loop.time() + pool._keepalive_expiry_s
        self.idle.append(conn)
        if pool._sweep_handle is None:
            pool._schedule_sweep()

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a checked-out connection and free its slot."""
        self._drop(conn)
        self._slot_freed()

    def _drop(self, conn: UpstreamConnection) -> None:
        conn.abort()
        self.conns.discard(conn)

    def _slot_freed(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the waiter; `open` is unchanged
                return
        self.open -= 1

    def sweep(self, now: float) -> None:
        idle = self.idle
        while idle and (idle[0].expires_at <= now or not idle[0].usable):
            self._drop(idle.popleft())
            self.open -= 1

    def close(self) -> None:
        while self.idle:
            self._drop(self.idle.pop())
            self.open -= 1
        # Busy connections: their responses see UpstreamDisconnected and free
        # the slot when they are closed.
        for conn in self.conns:
            conn.abort()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolClosed("upstream pool is closed"))


def _expire_waiter(fut: asyncio.Future[UpstreamConnection | None], origin: Origin) -> None:
    if not fut.done():
        fut.set_exception(PoolTimeout(f"no free connection to {origin[1]}:{origin[2]} in time"))


class UpstreamPool:
    """Pooled HTTP/1.1 client for the gateway's proxy hot path (asyncio only).

    One pool per gateway process, created inside the running event loop.

    Args:
        max_connections_per_origin: limit of open connections per
            ``(scheme, host, port)``; further requests wait FIFO for a free
            slot up to ``connect_timeout_s``, then get ``PoolTimeout``.
        keepalive_expiry_s: an idle connection older than this is never
            reused. Keep it below the server's idle timeout (uvicorn, which
            serves vLLM, closes after 5 s) so we never write to a connection
            the server is closing.
        connect_timeout_s: TCP connect limit (``UpstreamConnectTimeout``), and
            the longest wait for a free slot (``PoolTimeout``).
        first_byte_timeout_s: default limit from sending the request to the
            complete response head (``FirstByteTimeout``); ``None``: no limit.
        read_idle_timeout_s: longest gap in the body while the consumer is
            waiting for data (``ReadTimeout``); ``None``: no limit.
        write_buffer_high: body bytes buffered for a consumer that does not
            read before the socket is paused (back-pressure to the upstream).
        ssl_context: TLS settings for ``https`` origins; the system trust store
            (``ssl.create_default_context()``) when omitted.
    """

    def __init__(
        self,
        *,
        max_connections_per_origin: int = 256,
        keepalive_expiry_s: float = 4.0,
        connect_timeout_s: float = 2.0,
        first_byte_timeout_s: float | None = 300.0,
        read_idle_timeout_s: float | None = 300.0,
        write_buffer_high: int = 256 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be >= 1")
        if keepalive_expiry_s <= 0 or connect_timeout_s <= 0 or write_buffer_high < 1:
            raise ValueError("keepalive_expiry_s, connect_timeout_s, write_buffer_high must be > 0")
        self._loop = asyncio.get_running_loop()
        self._max = max_connections_per_origin
        self._keepalive_expiry_s = keepalive_expiry_s
        self._connect_timeout_s = connect_timeout_s
        self._first_byte_timeout_s = first_byte_timeout_s
        self._read_idle_timeout_s = read_idle_timeout_s
        self._read_high = write_buffer_high
        # Expired idle connections are closed lazily at checkout; this sweep
        # only releases sockets nobody asks for. Half the expiry, at most 1 s.
        self._sweep_interval_s = min(keepalive_expiry_s / 2, 1.0)
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._origins: dict[Origin, _OriginPool] = {}
        self._ssl_context: ssl.SSLContext | None = ssl_context
        self._closed = False

    async def request(
        self,
        method: bytes | str,
        origin: Origin,
        target: bytes | str,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        first_byte_timeout_s: float | _Default | None = DEFAULT,
    ) -> UpstreamResponse:
        """Send one request and return once the response head is parsed.

        ``Host`` and ``Content-Length`` are set here; other headers are sent
        verbatim (strip hop-by-hop headers before calling). A reused
        keep-alive connection that fails before any response byte is retried
        once on a new connection; nothing else is retried.

        Args:
            method: e.g. ``b"POST"``.
            origin: ``("http", host, port)``.
            target: origin-form request target, e.g. ``b"/v1/chat/completions"``.
            headers: ``(name, value)`` pairs.
            body: the whole request body.
            first_byte_timeout_s: overrides the pool default for this request.

        Returns:
            The response; read or iterate its body, then close it (or use it
            with ``async with``).

        Raises:
            ValueError: unsupported scheme, or CR/LF in method, target or headers.
            UpstreamConnectError, UpstreamConnectTimeout, PoolTimeout,
            PoolClosed, FirstByteTimeout, UpstreamDisconnected,
            UpstreamProtocolError: see ``_errors``; all carry
            ``response_started``.

        Cancellation: safe at any point; the connection in use is closed,
        never returned to the pool. Wrap the call (and the body reads) in
        ``asyncio.timeout`` for a total deadline.
        """
        op = self._origins.get(origin)
        if op is None:
            op = self._add_origin(origin)
        if isinstance(method, str):
            method = method.encode("ascii")
        if isinstance(target, str):
            target = target.encode("ascii")
        head = build_request_head(method, target, op.host, headers, len(body))
        fbt = (
            self._first_byte_timeout_s
            if isinstance(first_byte_timeout_s, _Default)
            else first_byte_timeout_s
        )
        is_head = method == b"HEAD"
        conn = await op.acquire()
        try:
            await conn.send(head, body, is_head=is_head, first_byte_timeout_s=fbt)
        except _StaleConnection:
            op.discard(conn)
            conn = await op.acquire(fresh=True)
            try:
                await conn.send(head, body, is_head=is_head, first_byte_timeout_s=fbt)
            except _StaleConnection as exc:  # handed a reused one while saturated; not twice
                op.discard(conn)
                raise UpstreamDisconnected(str(exc), response_started=False) from exc
            except BaseException:
                op.discard(conn)
                raise
        except BaseException:
            op.discard(conn)
            raise
        return UpstreamResponse(conn, op)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """TLS settings for ``https`` engines (system trust store unless one was given)."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def stats(self) -> list[OriginStats]:
        """Per-origin connection counts (O(origins), no per-connection work)."""
        return [
            OriginStats(
                origin=o.origin,
                open=o.open,
                idle=len(o.idle),
                busy=o.open - len(o.idle),
                waiting=sum(1 for f in o.waiters if not f.done()),
            )
            for o in self._origins.values()
        ]

    async def aclose(self) -> None:
        """Close idle connections, fail waiting requests with ``PoolClosed``,
        and refuse new requests. Connections held by open responses are closed
        when those responses are closed or finish. Idempotent."""
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for op in self._origins.values():
            op.close()
        await asyncio.sleep(0)  # let the transports run connection_lost

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _add_origin(self, origin: Origin) -> _OriginPool:
        if self._closed:
            raise PoolClosed("upstream pool is closed")
        op = self._origins[origin] = _OriginPool(self, normalise_origin(origin))
        return op

    def _schedule_sweep(self) -> None:
        self._sweep_handle = self._loop.call_later(self._sweep_interval_s, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self._loop.time()
        pending = False
        for op in self._origins.values():
            op.sweep(now)
            pending = pending or bool(op.idle)
        if pending and not self._closed:
            self._schedule_sweep()
