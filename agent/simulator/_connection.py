"""One client connection of the simulator: a raw ``asyncio.Protocol`` over httptools.

Requests on one connection are answered in order (pipelining-safe). A handler's
answer is either bytes, written at once inside ``data_received`` (the fast path),
or a coroutine that writes for itself, run in one task per connection; a client
disconnect or a shutdown abort cancels that task.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import httptools

from sage.unified.agent.simulator._http import response
from sage.unified.agent.simulator._responses import error_body

if TYPE_CHECKING:
    from sage.unified.agent.simulator._server import Simulator

__all__ = ["MAX_BODY_BYTES", "Connection", "Handler", "Outcome", "Request"]

MAX_BODY_BYTES = 16 * 1024 * 1024

Outcome = bytes | Coroutine[Any, Any, None]
Handler = Callable[["Connection", "Request"], Outcome]


class Request:
    """One parsed HTTP request (only what the simulator reads)."""

    __slots__ = (
        "body",
        "body_len",
        "content_type",
        "keep_alive",
        "method",
        "request_id",
        "too_large",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.method = b"GET"
        self.body: list[bytes] = []
        self.body_len = 0
        self.keep_alive = True
        self.request_id: bytes | None = None
        self.content_type = b""
        self.too_large = False

    def payload(self) -> bytes:
        """The whole body."""
        return b"".join(self.body)


class Connection(asyncio.Protocol):
    """One client connection: parses requests and writes answers in order."""

    __slots__ = (
        "_cur",
        "_parser",
        "_pending",
        "_sim",
        "closed",
        "last_active",
        "task",
        "transport",
    )

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._parser = httptools.HttpRequestParser(self)
        self._cur: Request | None = None
        self._pending: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.last_active = time.monotonic()
        self.transport: asyncio.Transport | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, only compatible.
        self.transport = transport  # type: ignore[assignment]
        self._sim.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._sim.connections.discard(self)
        self._pending.clear()
        if self.task is not None:
            # The client went away: stop generating and free the running slot now.
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Protocol upgrades are not supported.")
        except httptools.HttpParserError as exc:
            self._fail(400, f"Malformed HTTP request: {exc}")

    def _fail(self, status: int, message: str) -> None:
        if self.task is None:
            self.write(
                response(status, error_body(message, "BadRequestError", status), keep_alive=False)
            )
        self.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._cur = Request()

    def on_url(self, url: bytes) -> None:
        assert self._cur is not None
        self._cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        cur = self._cur
        assert cur is not None
        lname = name.lower()
        if lname == b"x-request-id":
            cur.request_id = value
        elif lname == b"content-type":
            cur.content_type = value
        elif lname == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            cur.too_large = True

    def on_headers_complete(self) -> None:
        cur = self._cur
        assert cur is not None
        cur.method = self._parser.get_method()
        cur.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        cur = self._cur
        assert cur is not None
        if cur.too_large:
            return
        cur.body_len += len(body)
        if cur.body_len > MAX_BODY_BYTES:
            # Keep reading (so the 413 reaches the client) but drop the bytes.
            cur.too_large = True
            cur.body.clear()
        else:
            cur.body.append(body)

    def on_message_complete(self) -> None:
        req = self._cur
        assert req is not None
        self._cur = None
        if self.task is not None or self._pending:
            self._pending.append(req)
        else:
            self._dispatch(req)

    # answering

    def _dispatch(self, req: Request) -> None:
        sim = self._sim
        out = sim.handle(self, req)
        if isinstance(out, bytes):
            self.write(out)
            if not req.keep_alive or out.startswith(b"HTTP/1.1 413") or sim.draining:
                self.close()
            return
        task = asyncio.get_running_loop().create_task(self._run(out, req.keep_alive))
        self.task = task
        sim.inflight.add(task)
        task.add_done_callback(sim.inflight.discard)

    async def _run(self, coro: Coroutine[Any, Any, None], keep_alive: bool) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            # Cancelled by us: the client left, or a shutdown abort already answered.
            self.close()
            return
        finally:
            self.task = None
            self.last_active = time.monotonic()
        if not keep_alive or self._sim.draining:
            self.close()
            return
        while self._pending and self.task is None and not self.closed:
            self._dispatch(self._pending.popleft())

    def write(self, data: bytes) -> None:
        """Write unless the connection is gone."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    @property
    def idle(self) -> bool:
        """No request being read or answered."""
        return self.task is None and self._cur is None and not self._pending
