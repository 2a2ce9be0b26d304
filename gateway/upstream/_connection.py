"""One upstream HTTP/1.1 connection: an ``asyncio.Protocol`` driving an httptools parser.

The protocol callbacks do the work (no reader task per connection): bytes
arrive in ``data_received``, the llhttp-based parser calls back
``on_header``/``on_body``/``on_message_complete``, and everything a
``data_received`` batch decoded becomes one body chunk in a deque that the
consumer pops. Timeouts are timer handles, not tasks or cancel scopes; the
read-idle timer is lazy (each batch only stores ``loop.time()``, the timer
re-arms itself when it fires early) so streaming pays no per-chunk timer cost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, cast

import httptools

from ._errors import (
    FirstByteTimeout,
    ReadTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    _StaleConnection,
)

__all__ = ["UpstreamConnection"]

# Connection states (ints: compared on every data_received).
IDLE: Final = 0  # in the pool or between responses
WAIT_HEAD: Final = 1  # request written, status line + headers not complete
BODY: Final = 2  # headers done, body arriving
DONE: Final = 3  # final response complete (chunks may still be buffered)
FAILED: Final = 4  # an error is recorded; never reused


class UpstreamConnection(asyncio.Protocol):
    """A single keep-alive connection; one request at a time (no pipelining).

    Owned by the pool: it checks connections out, calls ``send``, hands the
    connection to an ``UpstreamResponse`` and takes it back (``reusable``) or
    closes it (``abort``).
    """

    __slots__ = (
        "_batch",
        "_buffered",
        "_chunks",
        "_error",
        "_got_bytes",
        "_head_fut",
        "_headers",
        "_high",
        "_interim",
        "_is_head",
        "_keep_alive",
        "_last_rx",
        "_loop",
        "_low",
        "_parser",
        "_paused",
        "_read_idle",
        "_state",
        "_status",
        "_timer",
        "_transport",
        "_waiter",
        "expires_at",
        "lost",
        "reused",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, read_high: int, read_idle_timeout_s: float | None
    ) -> None:
        self._loop = loop
        self._high = read_high
        self._low = read_high // 4
        self._read_idle = read_idle_timeout_s
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._state: int = IDLE
        self._is_head = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_fut: asyncio.Future[None] | None = None
        self._batch: list[bytes] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._paused = False
        self._got_bytes = False
        self._keep_alive = False
        self._interim = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self.lost = False
        #: True when checked out of the idle pool (a stale-connection failure is retried).
        self.reused = False
        #: loop.time() after which an idle connection must not be reused.
        self.expires_at = 0.0

    # -- pool-facing API ----------------------------------------------------

    @property
    def usable(self) -> bool:
        """Alive, idle and not half-closed: safe to send the next request on."""
        t = self._transport
        return not self.lost and self._state == IDLE and t is not None and not t.is_closing()

    @property
    def reusable(self) -> bool:
        """The response is complete, fully consumed and the server allows keep-alive."""
        t = self._transport
        return (
            self._state == DONE
            and self._keep_alive
            and not self._chunks
            and not self.lost
            and t is not None
            and not t.is_closing()
        )

    @property
    def complete(self) -> bool:
        """The whole body was received and consumed."""
        return self._state == DONE and not self._chunks

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet consumed (bounded by back-pressure)."""
        return self._buffered

    def reset_idle(self) -> None:
        """Forget the finished response before the connection goes back to the pool."""
        self._state = IDLE
        self._parser = None
        self._headers = []
        if self._paused:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def abort(self) -> None:
        """Close the socket now (no flush); pending waiters get ``UpstreamDisconnected``."""
        self._cancel_timer()
        if self._state != FAILED and self._state != DONE and self._state != IDLE:
            self._set_error(
                UpstreamDisconnected("connection closed locally", response_started=self._got_bytes)
            )
        self._state = FAILED
        self._parser = None  # the parser holds bound methods of self: break the cycle
        t = self._transport
        if t is not None and not t.is_closing():
            t.abort()

    async def send(
        self, head: bytes, body: bytes, *, is_head: bool, first_byte_timeout_s: float | None
    ) -> None:
        """Write a request and wait until the final response's headers are parsed.

        Raises:
            FirstByteTimeout: no complete head within ``first_byte_timeout_s``.
            UpstreamDisconnected: the server closed the connection first
                (``_StaleConnection`` when this was a reused connection and no
                byte came back: the pool retries it once).
            UpstreamProtocolError: the response is not valid HTTP/1.1.

        Cancellation: the caller (the pool) aborts the connection.
        """
        transport = self._transport
        if transport is None or self.lost or transport.is_closing():
            raise (_StaleConnection if self.reused else UpstreamDisconnected)(
                "upstream connection closed before the request was sent"
            )
        loop = self._loop
        self._parser = httptools.HttpResponseParser(self)
        self._is_head = is_head
        self._got_bytes = False
        self._keep_alive = False
        self._interim = False
        self._error = None
        self._state = WAIT_HEAD
        fut = self._head_fut = loop.create_future()
        if len(body) <= 65536:
            transport.write(head + body)  # one segment for the common small JSON body
        else:
            transport.write(head)
            transport.write(body)
        if first_byte_timeout_s is not None:
            self._timer = loop.call_later(first_byte_timeout_s, self._on_timer)
        try:
            await fut
        finally:
            self._head_fut = None

    def pop_chunk(self) -> bytes | None:
        """The next buffered body chunk, or ``None`` if none is buffered now."""
        chunks = self._chunks
        if not chunks:
            return None
        chunk = chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= self._low:
            self._paused = False
            self._last_rx = self._loop.time()  # the pause was ours, not an upstream stall
            if self._transport is not None:
                self._transport.resume_reading()
        return chunk

    async def next_chunk(self) -> bytes | None:
        """Wait for the next body chunk; ``None`` once the body is complete.

        Raises:
            ReadTimeout, UpstreamDisconnected, UpstreamProtocolError: after
                the chunks received before the failure were consumed.
        """
        while True:
            chunk = self.pop_chunk()
            if chunk is not None:
                return chunk
            if self._error is not None:
                raise self._error
            if self._state == DONE:
                return None
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: no isinstance.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state in (WAIT_HEAD, BODY):
            self._got_bytes = True
            self._last_rx = self._loop.time()
            parser = self._parser
            assert parser is not None
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._fail(
                    UpstreamProtocolError("unexpected protocol upgrade", response_started=True)
                )
            except httptools.HttpParserError as exc:
                self._fail(
                    UpstreamProtocolError(f"invalid HTTP response: {exc}", response_started=True)
                )
            batch = self._batch
            if batch:
                # One chunk per read batch: SSE events are relayed as they come,
                # never re-split nor held back to fill a buffer.
                chunk = batch[0] if len(batch) == 1 else b"".join(batch)
                batch.clear()
                self._chunks.append(chunk)
                self._buffered += len(chunk)
                if self._buffered > self._high and not self._paused and self._transport is not None:
                    self._paused = True
                    self._transport.pause_reading()
                self._wake()
        elif state == DONE:
            self._keep_alive = False  # bytes after a complete response: cannot trust the stream
        elif state == IDLE and self._transport is not None:
            # Unsolicited bytes on an idle connection (typically a 408 before
            # the server closes): the connection is unusable.
            self._state = FAILED
            self._transport.abort()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost settles the state

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_timer()
        self._parser = None
        state = self._state
        if state == WAIT_HEAD:
            if not self._got_bytes and self.reused:
                err: UpstreamError = _StaleConnection(
                    "reused keep-alive connection was closed by the upstream"
                )
            else:
                err = UpstreamDisconnected(
                    "upstream closed the connection before sending response headers",
                    response_started=self._got_bytes,
                )
            self._state = FAILED
            self._set_error(err)
        elif state == BODY:
            if self._delimited_by_close():
                self._state = DONE
                self._wake()
            else:
                self._state = FAILED
                self._set_error(
                    UpstreamDisconnected(
                        "upstream closed the connection mid-body", response_started=True
                    )
                )
        elif state == IDLE:
            self._state = FAILED

    def pause_writing(self) -> None:  # request bodies are small and fully buffered
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks --------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            # 1xx interim (100 Continue, 103 Early Hints): llhttp completes it
            # as a body-less message and parses the final response next.
            self._interim = True
            self._headers = []
            return
        self._status = status
        self._keep_alive = parser.should_keep_alive()
        if self._is_head:
            # llhttp cannot be told "response to HEAD": it would wait for
            # Content-Length body bytes. The parser is dropped instead.
            self._complete()
        else:
            self._state = BODY
            idle = self._read_idle
            if idle is not None:
                t = self._timer
                deadline = self._last_rx + idle
                if t is None or t.when() > deadline:
                    if t is not None:
                        t.cancel()
                    self._timer = self._loop.call_at(deadline, self._on_timer)
        fut = self._head_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._state == BODY:
            self._batch.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._state == BODY:
            self._complete()

    # -- internals --------------------------------------------------------------

    def _complete(self) -> None:
        self._state = DONE
        self._cancel_timer()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_error(self, err: UpstreamError) -> None:
        if self._error is None:
            self._error = err
        fut = self._head_fut
        if fut is not None and not fut.done():
            fut.set_exception(err)
        self._wake()

    def _fail(self, err: UpstreamError) -> None:
        if self._state == DONE:
            self._keep_alive = False  # garbage after a complete response
        elif self._state != FAILED:
            self._state = FAILED
            self._set_error(err)
        self._cancel_timer()
        t = self._transport
        if t is not None and not t.is_closing():
            t.abort()

    def _cancel_timer(self) -> None:
        t = self._timer
        if t is not None:
            self._timer = None
            t.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        state = self._state
        if state == WAIT_HEAD:
            self._fail(
                FirstByteTimeout(
                    "upstream sent no response headers in time", response_started=self._got_bytes
                )
            )
        elif state == BODY and self._read_idle is not None:
            idle = self._read_idle
            if self._paused:
                # Our consumer is not reading; that is not an upstream stall.
                self._timer = self._loop.call_later(idle, self._on_timer)
                return
            remaining = self._last_rx + idle - self._loop.time()
            if remaining <= 0:
                self._fail(ReadTimeout("upstream body stalled", response_started=True))
            else:
                self._timer = self._loop.call_later(remaining, self._on_timer)

    def _delimited_by_close(self) -> bool:
        # A response with neither Content-Length nor Transfer-Encoding ends at
        # EOF (RFC 9112 §6.3 rule 8). httptools has no feed_eof(); decide here
        # (only on connection loss, so the hot path pays nothing).
        for name, _ in self._headers:
            if name == b"content-length" or name == b"transfer-encoding":
                return False
        return True
