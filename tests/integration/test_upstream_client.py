"""The upstream client against real asyncio servers on 127.0.0.1.

Each test scripts a tiny HTTP/1.1 server (a handler coroutine per accepted
connection) so it can count accepts, stall, close or stream exactly when it
wants. The client is asyncio-only, so these tests run on asyncio only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sage.unified.gateway.upstream import (
    FirstByteTimeout,
    PoolTimeout,
    ReadTimeout,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamPool,
    UpstreamProtocolError,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        # The gateway runs on uvloop, whose transports are separate code.
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    backend: tuple[str, dict[str, object]] = request.param
    return backend


class Server:
    """A loopback server running ``handler`` once per accepted connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepts = 0
        self.requests: list[bytes] = []
        self.closed_connections = 0
        self.eof_seen = asyncio.Event()
        self.origin = ("http", "127.0.0.1", 0)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.origin = ("http", "127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels handlers; ending normally keeps asyncio's
            # start_server callback from logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            self.closed_connections += 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request (head + body), or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.eof_seen.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def keepalive_handler(body: bytes = b"hello", extra_headers: bytes = b"") -> Handler:
    """Answers every request on the connection with ``body`` (keep-alive)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server: Server = handler.server  # type: ignore[attr-defined]
        while await server.read_request(reader) is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s"
                % (len(body), extra_headers, body)
            )
            await writer.drain()

    return handler


@contextlib.asynccontextmanager
async def keepalive_server(
    body: bytes = b"hello", extra_headers: bytes = b""
) -> AsyncIterator[Server]:
    handler = keepalive_handler(body, extra_headers)
    async with serving(handler) as server:
        handler.server = server  # type: ignore[attr-defined]
        yield server


def busy(pool: UpstreamPool) -> int:
    return sum(s.busy for s in pool.stats())


async def test_content_length_body_and_request_head() -> None:
    async with keepalive_server(b'{"ok": true}') as server:
        pool = UpstreamPool()
        try:
            resp = await pool.request(
                "POST", server.origin, "/v1/completions", [(b"x-trace", b"abc")], b'{"a":1}'
            )
            assert resp.status == 200
            assert (b"content-length", b"12") in resp.headers
            assert await resp.read() == b'{"ok": true}'
        finally:
            await pool.aclose()
    sent = server.requests[0]
    assert sent.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:%d\r\n" % server.origin[2] in sent
    assert b"\r\ncontent-length: 7\r\n" in sent
    assert b"\r\nx-trace: abc\r\n" in sent
    assert sent.endswith(b'\r\n\r\n{"a":1}')


async def test_chunked_body_yields_chunks_as_they_arrive() -> None:
    second_chunk_allowed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        writer.write(b'10\r\ndata: {"a": 1}\n\n\r\n')
        await writer.drain()
        await second_chunk_allowed.wait()
        # Two SSE events in one write arrive as one batch: one chunk, not re-split.
        writer.write(b"e\r\ndata: second\n\n\r\nd\r\ndata: third\n\n\r\n0\r\n\r\n")
        await writer.drain()
        await server.read_request(reader)

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            resp = await pool.request(b"POST", server.origin, b"/v1/chat", [], b"{}")
            chunks = []
            async with resp:
                async for chunk in resp:
                    chunks.append(chunk)
                    second_chunk_allowed.set()  # the server sends more only after we got one
            assert chunks == [b'data: {"a": 1}\n\n', b"data: second\n\ndata: third\n\n"]
            assert busy(pool) == 0
            assert pool.stats()[0].idle == 1  # reusable after a complete chunked body
        finally:
            await pool.aclose()


async def test_keepalive_reuses_one_connection() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool()
        try:
            for _ in range(5):
                async with await pool.request(b"GET", server.origin, b"/v1/models", []) as resp:
                    assert await resp.read() == b"hello"
            assert server.accepts == 1
            assert len(server.requests) == 5
        finally:
            await pool.aclose()


async def test_lifo_reuse_prefers_most_recent_connection() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool()
        try:
            a = await pool.request(b"GET", server.origin, b"/", [])
            b = await pool.request(b"GET", server.origin, b"/", [])
            assert server.accepts == 2
            await a.read()
            await b.read()  # b's connection is released last
            stats = pool.stats()[0]
            assert (stats.open, stats.idle) == (2, 2)
            for _ in range(3):
                await (await pool.request(b"GET", server.origin, b"/", [])).read()
            assert server.accepts == 2
            assert pool.stats()[0].idle == 2
        finally:
            await pool.aclose()


async def test_expired_idle_connection_is_not_reused() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool(keepalive_expiry_s=0.2)
        try:
            await (await pool.request(b"GET", server.origin, b"/", [])).read()
            await asyncio.sleep(0.05)
            await (await pool.request(b"GET", server.origin, b"/", [])).read()
            assert server.accepts == 1
            await asyncio.sleep(0.3)
            await (await pool.request(b"GET", server.origin, b"/", [])).read()
            assert server.accepts == 2
        finally:
            await pool.aclose()


async def test_periodic_sweep_closes_expired_idle_connections() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool(keepalive_expiry_s=0.1)
        try:
            await (await pool.request(b"GET", server.origin, b"/", [])).read()
            assert pool.stats()[0].idle == 1
            await asyncio.wait_for(server.eof_seen.wait(), 2.0)  # closed without a new request
            assert (pool.stats()[0].open, pool.stats()[0].idle) == (0, 0)
        finally:
            await pool.aclose()


async def test_server_closed_idle_connection_is_retried_transparently() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepts == 1:
            # First connection: answer once, then swallow the next request and
            # close without a byte (a server that dropped the idle connection).
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            return
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nretry")
            await writer.drain()

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            assert await (await pool.request(b"GET", server.origin, b"/", [])).read() == b"ok"
            resp = await pool.request(b"POST", server.origin, b"/", [], b"{}")
            assert await resp.read() == b"retry"
            assert server.accepts == 2
            assert busy(pool) == 0
        finally:
            await pool.aclose()


async def test_idle_connection_closed_by_server_is_dropped_at_checkout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        # Keep-alive response, then an idle close (a server's idle timeout).
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            assert await (await pool.request(b"GET", server.origin, b"/", [])).read() == b"ok"
            for _ in range(50):
                if server.closed_connections == 1:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.02)  # the client loop processes the EOF
            assert await (await pool.request(b"GET", server.origin, b"/", [])).read() == b"ok"
            assert server.accepts == 2
            assert len(server.requests) == 2  # no request was lost on the dead connection
        finally:
            await pool.aclose()


async def test_fresh_connection_closed_before_response_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            with pytest.raises(UpstreamDisconnected) as info:
                await pool.request(b"POST", server.origin, b"/", [], b"{}")
            assert info.value.response_started is False
            assert server.accepts == 1
            assert busy(pool) == 0
        finally:
            await pool.aclose()


async def test_connection_refused() -> None:
    server = Server(keepalive_handler())
    await server.start()
    origin = server.origin
    await server.stop()
    pool = UpstreamPool()
    try:
        with pytest.raises(UpstreamConnectError) as info:
            await pool.request(b"GET", origin, b"/", [])
        assert info.value.response_started is False
        assert pool.stats()[0].open == 0
    finally:
        await pool.aclose()


async def test_first_byte_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await server.read_request(reader)  # never answers; sees EOF when the client gives up

    async with serving(handler) as server:
        pool = UpstreamPool(first_byte_timeout_s=10.0)
        try:
            with pytest.raises(FirstByteTimeout) as info:
                await pool.request(b"GET", server.origin, b"/", [], first_byte_timeout_s=0.1)
            assert info.value.response_started is False
            await asyncio.wait_for(server.eof_seen.wait(), 2.0)
            assert pool.stats()[0].open == 0
        finally:
            await pool.aclose()


async def test_read_idle_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        await server.read_request(reader)

    async with serving(handler) as server:
        pool = UpstreamPool(read_idle_timeout_s=0.2)
        try:
            resp = await pool.request(b"GET", server.origin, b"/", [])
            assert await resp.__anext__() == b"partial"
            with pytest.raises(ReadTimeout) as info:
                await resp.__anext__()
            assert info.value.response_started is True
            await asyncio.wait_for(server.eof_seen.wait(), 2.0)
            assert pool.stats()[0].open == 0
        finally:
            await pool.aclose()


async def test_server_dies_mid_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
        await writer.drain()

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            resp = await pool.request(b"GET", server.origin, b"/", [])
            with pytest.raises(UpstreamDisconnected) as info:
                await resp.read()
            assert info.value.response_started is True
            assert pool.stats()[0].open == 0
        finally:
            await pool.aclose()


async def test_read_until_close_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"eof")

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            resp = await pool.request(b"GET", server.origin, b"/", [])
            assert await resp.read() == b"until eof"
            assert pool.stats()[0].open == 0
        finally:
            await pool.aclose()


async def test_aclose_mid_body_closes_the_socket_promptly() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await server.read_request(reader)  # the client hangs up: EOF

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            resp = await pool.request(b"POST", server.origin, b"/", [], b"{}")
            assert await resp.__anext__() == b"first"
            await resp.aclose()
            await asyncio.wait_for(server.eof_seen.wait(), 1.0)
            assert pool.stats()[0].open == 0
            with pytest.raises(UpstreamDisconnected):
                await resp.__anext__()
        finally:
            await pool.aclose()


async def test_close_while_a_reader_waits_frees_the_slot_once() -> None:
    # The gateway closes a stream from a callback when its client leaves, while the relay
    # is blocked waiting for the next chunk: the reader must see a disconnect and the
    # pool must count the connection closed exactly once.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await server.read_request(reader)

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            for _ in range(3):
                resp = await pool.request(b"POST", server.origin, b"/", [], b"{}")
                assert await resp.__anext__() == b"first"
                waiter = asyncio.ensure_future(resp.__anext__())
                await asyncio.sleep(0)
                resp.close()
                with pytest.raises(UpstreamDisconnected):
                    await waiter
                assert pool.stats()[0].open == 0
        finally:
            await pool.aclose()


async def test_pool_limit_queues_then_times_out() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool(max_connections_per_origin=1, connect_timeout_s=0.2)
        try:
            first = await pool.request(b"GET", server.origin, b"/", [])
            with pytest.raises(PoolTimeout) as info:
                await pool.request(b"GET", server.origin, b"/", [])
            assert info.value.response_started is False

            waiting = asyncio.ensure_future(pool.request(b"GET", server.origin, b"/2", []))
            await asyncio.sleep(0.05)
            assert pool.stats()[0].waiting == 1
            await first.read()  # hands the connection to the waiter
            second = await waiting
            assert await second.read() == b"hello"
            assert server.accepts == 1
            assert busy(pool) == 0
        finally:
            await pool.aclose()


async def test_waiter_gets_a_slot_when_a_connection_is_closed() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool(max_connections_per_origin=1, connect_timeout_s=2.0)
        try:
            first = await pool.request(b"GET", server.origin, b"/", [])
            waiting = asyncio.ensure_future(pool.request(b"GET", server.origin, b"/", []))
            await asyncio.sleep(0.05)
            await first.aclose()  # body unread: closed, its slot passes to the waiter
            assert await (await waiting).read() == b"hello"
            assert server.accepts == 2
            assert pool.stats()[0].open == 1
        finally:
            await pool.aclose()


async def test_waiters_are_served_fifo_and_a_cancelled_waiter_leaks_nothing() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool(max_connections_per_origin=1, connect_timeout_s=5.0)
        try:
            first = await pool.request(b"GET", server.origin, b"/", [])
            order: list[str] = []

            async def wait(name: str) -> None:
                resp = await pool.request(b"GET", server.origin, b"/", [])
                order.append(name)
                await resp.read()

            cancelled = asyncio.ensure_future(wait("cancelled"))
            await asyncio.sleep(0.02)
            a = asyncio.ensure_future(wait("a"))
            await asyncio.sleep(0.02)
            b = asyncio.ensure_future(wait("b"))
            await asyncio.sleep(0.02)
            assert pool.stats()[0].waiting == 3
            cancelled.cancel()
            await first.read()
            await asyncio.wait_for(asyncio.gather(a, b), 2.0)
            assert cancelled.cancelled()
            assert order == ["a", "b"]
            stats = pool.stats()[0]
            assert (stats.open, stats.idle, stats.waiting) == (1, 1, 0)
            assert server.accepts == 1
        finally:
            await pool.aclose()


async def test_waiter_cancelled_in_the_tick_it_is_handed_a_connection_returns_it() -> None:
    async with keepalive_server() as server:
        pool = UpstreamPool(max_connections_per_origin=1, connect_timeout_s=5.0)
        try:
            first = await pool.request(b"GET", server.origin, b"/", [])
            waiter = asyncio.ensure_future(pool.request(b"GET", server.origin, b"/", []))
            await asyncio.sleep(0.05)  # the waiter queues; first's body is buffered
            assert first.buffered_bytes == 5
            assert await first.read() == b"hello"  # hands the connection over without yielding
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            stats = pool.stats()[0]
            assert (stats.open, stats.idle, stats.busy) == (1, 1, 0)
        finally:
            await pool.aclose()


async def test_back_pressure_bounds_buffered_bytes() -> None:
    total = 50 * 1024 * 1024
    block = b"x" * (1024 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
        await server.read_request(reader)

    high = 256 * 1024
    async with serving(handler) as server:
        pool = UpstreamPool(write_buffer_high=high, read_idle_timeout_s=0.2)
        try:
            resp = await pool.request(b"GET", server.origin, b"/", [])
            peak = 0
            for _ in range(10):  # a consumer that does not read (longer than the idle timeout)
                await asyncio.sleep(0.05)
                peak = max(peak, resp.buffered_bytes)
            # One read batch may land on top of the high-water mark.
            assert high <= peak <= high + 512 * 1024
            received = 0
            async for chunk in resp:
                received += len(chunk)
                peak = max(peak, resp.buffered_bytes)
            assert received == total
            assert peak <= high + 512 * 1024
        finally:
            await pool.aclose()


async def test_connection_close_response_is_not_reused() -> None:
    async with keepalive_server(extra_headers=b"connection: close\r\n") as server:
        pool = UpstreamPool()
        try:
            for _ in range(2):
                async with await pool.request(b"GET", server.origin, b"/", []) as resp:
                    assert await resp.read() == b"hello"
            assert server.accepts == 2
            assert pool.stats()[0].open == 0
        finally:
            await pool.aclose()


async def test_cancellation_mid_request_and_mid_body_leaks_nothing() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.read_request(reader)) is not None:
            if b"/stall-head" in request:
                await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            await writer.drain()
            if b"/stall-body" in request:
                await release.wait()
            writer.write(b"defghij")

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await pool.request(b"GET", server.origin, b"/stall-head", [])
            assert busy(pool) == 0

            resp = await pool.request(b"GET", server.origin, b"/stall-body", [])
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await resp.read()
            assert busy(pool) == 0
            assert pool.stats()[0].open == 0  # cancelled connections are closed, not pooled

            task = asyncio.ensure_future(pool.request(b"GET", server.origin, b"/stall-head", []))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert busy(pool) == 0
            release.set()
            assert (
                await (await pool.request(b"GET", server.origin, b"/", [])).read() == b"abcdefghij"
            )
        finally:
            await pool.aclose()


async def test_interim_100_continue_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")
        await server.read_request(reader)

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            resp = await pool.request(b"POST", server.origin, b"/", [], b"x")
            assert resp.status == 201
            assert await resp.read() == b"done"
            assert pool.stats()[0].idle == 1
        finally:
            await pool.aclose()


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
async def test_responses_without_body_keep_the_connection(method: bytes, status: int) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            # A HEAD answer carries the GET's Content-Length but no body.
            length = b"content-length: 42\r\n" if method == b"HEAD" else b""
            writer.write(b"HTTP/1.1 %d X\r\n%s\r\n" % (status, length))
            await writer.drain()

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            for _ in range(2):
                async with await pool.request(method, server.origin, b"/", []) as resp:
                    assert resp.status == status
                    assert await resp.read() == b""
            assert server.accepts == 1
        finally:
            await pool.aclose()


async def test_invalid_response_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await server.read_request(reader)

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            with pytest.raises(UpstreamProtocolError) as info:
                await pool.request(b"GET", server.origin, b"/", [])
            assert info.value.response_started is True
            assert pool.stats()[0].open == 0
        finally:
            await pool.aclose()


async def test_pool_aclose_closes_idle_and_busy_connections() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.read_request(reader)) is not None:
            if b"/stream" in request:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")
            await writer.drain()

    async with serving(handler) as server:
        pool = UpstreamPool()
        streaming = await pool.request(b"GET", server.origin, b"/stream", [])
        await (await pool.request(b"GET", server.origin, b"/", [])).read()
        assert (pool.stats()[0].open, pool.stats()[0].idle) == (2, 1)
        await pool.aclose()
        assert await streaming.__anext__() == b"a"
        with pytest.raises(UpstreamDisconnected):
            await streaming.__anext__()
        for _ in range(20):
            if server.closed_connections == 2:
                break
            await asyncio.sleep(0.02)
        assert server.closed_connections == 2
        assert pool.stats()[0].open == 0


async def test_https_engine_with_a_trusted_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = functools.partial(subprocess.run, check=True, capture_output=True, timeout=60)
    await asyncio.to_thread(
        openssl,
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if line)
            length = int(fields.get(b"content-length", b"0"))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    client_tls = ssl.create_default_context(cafile=str(cert))
    pool = UpstreamPool(ssl_context=client_tls)
    try:
        for _ in range(3):
            response = await pool.request(b"POST", ("https", "127.0.0.1", port), b"/", [], b"{}")
            assert await response.read() == b"secure"
        assert accepted == 1  # kept alive over TLS
        untrusted = UpstreamPool()
        try:
            with pytest.raises(UpstreamConnectError):
                await untrusted.request(b"POST", ("https", "127.0.0.1", port), b"/", [], b"{}")
        finally:
            await untrusted.aclose()
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
