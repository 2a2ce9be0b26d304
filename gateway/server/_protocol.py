"""One client connection: HTTP/1.1 parsing (httptools) and the ASGI cycle of each request.

Measured on the benchmark machine (docs/performance.md), uvicorn's per-request machinery
cost about 15 µs of the gateway's ~51 µs per proxied request; this protocol does the same
job in a fraction of that by keeping per-request work to one scope dict, one task and one
socket write for a fixed-length response (head and body together).

Behaviour a client can rely on:

- keep-alive (HTTP/1.1 default, HTTP/1.0 on request), pipelined requests answered in
  order (reading pauses while one waits), ``Expect: 100-continue`` answered when the app
  first reads the body;
- responses without ``Content-Length`` are chunked (close-delimited for HTTP/1.0);
  ``HEAD``, 204 and 304 carry no body;
- a connection whose request body was not read to the end is closed after the response
  (the unread bytes cannot be mistaken for a next request);
- limits: header count/bytes (431), target length (414), malformed HTTP (400), no or
  several ``Host`` in HTTP/1.1 (400), a transfer coding but ``chunked`` (501), slow
  heads and bodies (408, see ``_limits.py``), each an OpenAI-shaped JSON error, then
  the connection is closed; past ``max_connections``, 503 and a close, request unread;
- trailer fields of a chunked body are dropped, never request headers (an
  ``Authorization`` sent as a trailer must not authenticate);
- back-pressure: ``send()`` waits while the client's socket buffer is full, and reading
  pauses while a request body is buffered beyond 64 KiB and not consumed;
- the client leaving makes ``receive()`` return ``http.disconnect``; later ``send()``
  calls are dropped (the app is not cancelled, as under uvicorn).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any, cast

import httptools

from ._cycle import RequestCycle
from ._limits import body_too_slow
from ._wire import address, error_response, split_target, unsupported_coding

if TYPE_CHECKING:
    from ._server import ServerState

__all__ = ["HttpConnection"]

log = logging.getLogger("sage.unified.gateway")

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_BODY_HIGH_WATER = 64 * 1024
_LINGER_S = 2.0
"""How long a closing connection keeps reading (and discarding) after its last response."""


class _Reject(Exception):
    """A request the parser callbacks refuse (answered with an error, then closed)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class HttpConnection(asyncio.Protocol):
    """An ``asyncio.Protocol`` serving one client connection."""

    __slots__ = (
        "_active",
        "_body_bytes",
        "_body_since",
        "_cycle_body_paused",
        "_drain",
        "_expect_continue",
        "_head_bytes",
        "_head_limit",
        "_head_started",
        "_header_bytes",
        "_headers",
        "_hosts",
        "_in_head",
        "_linger_until",
        "_parser",
        "_parsing",
        "_queue",
        "_read_paused",
        "_since_body_data",
        "_url",
        "client",
        "closing",
        "idle_since",
        "last_rx",
        "loop",
        "server",
        "shared",
        "transport",
        "write_paused",
    )

    def __init__(self, shared: ServerState) -> None:
        self.shared = shared
        self.loop = shared.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._expect_continue = False
        self._in_head = False
        self._head_bytes = 0
        self._head_started = 0.0
        self._hosts = 0
        self._body_since = 0.0  # when the body's rate clock started
        self._body_bytes = 0  # body bytes since then
        self._since_body_data = 0  # bytes read inside a body since its last data
        config = shared.config
        # Request line + headers + their separators; a generous bound, checked per read.
        self._head_limit = config.max_url_bytes + 2 * config.max_header_bytes + 4096
        self._parsing: RequestCycle | None = None  # the request whose bytes are being parsed
        self._active: RequestCycle | None = None  # the request being answered
        self._queue: collections.deque[RequestCycle] = collections.deque()
        self._read_paused = False
        self._cycle_body_paused = False
        self._linger_until: float | None = None
        self._drain: asyncio.Future[None] | None = None
        self.write_paused = False
        self.closing = False
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.last_rx = 0.0
        self.idle_since: float | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, do not check.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.client = address(transport.get_extra_info("peername"))
        self.server = address(transport.get_extra_info("sockname"))
        self.idle_since = self.last_rx = self.loop.time()
        shared = self.shared
        if len(shared.connections) >= shared.config.max_connections:
            self.closing = True  # refused: answered without reading, closed at once
            transport.write(shared.refusal())
            transport.close()
            return
        shared.connections.add(self)
        if shared.closing:
            self.closing = True
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)
        self.transport = None
        self.closing = True
        for cycle in (self._active, self._parsing, *self._queue):
            if cycle is not None and not cycle.disconnected:
                cycle.disconnected = True
                cycle.wake()
        self._queue.clear()
        self._parsing = None
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._parser = None  # type: ignore[assignment]  # it holds bound methods of self
        self.shared.idle_changed()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        parser = self._parser
        if parser is None or self._linger_until is not None:
            return  # lingering before a close: read and discard
        if self.closing and self._active is None:
            return  # refusing further requests
        if self._in_head:
            # httptools buffers a header line until its CRLF before calling on_header, so
            # one endless line would grow without bound: count the head's bytes here.
            self._head_bytes += len(data)
            if self._head_bytes > self._head_limit:
                config = self.shared.config
                self._reject(
                    431,
                    f"request headers exceed the limit ({config.max_header_bytes} bytes)",
                    "headers_too_large",
                )
                return
        elif self._parsing is not None:
            # Inside a body, httptools buffers trailer lines (and skips chunk extensions)
            # without bound: bytes that bring no body data count against the head limit.
            self._since_body_data += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here (no WebSockets): answer the request as plain
            # HTTP, then close, because the bytes after the head are not HTTP/1.1.
            self._no_more_requests()
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._reject(reject.status, str(reject), reject.code)
            else:
                log.error("HTTP parser callback failed", exc_info=reject)
                self._reject(400, "malformed HTTP request", "bad_request")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}", "bad_request")
        else:
            if self._since_body_data > self._head_limit:
                self._reject(431, "request trailers exceed the limit", "headers_too_large")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._expect_continue = False
        self._in_head = True
        self._head_bytes = 0
        self._head_started = self.last_rx
        self._hosts = 0
        self.idle_since = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.shared.config.max_url_bytes:
            raise _Reject(414, "the request target is too long", "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._header_bytes += len(name) + len(value)
        config = self.shared.config
        if len(headers) >= config.max_headers or self._header_bytes > config.max_header_bytes:
            raise _Reject(
                431,
                f"request headers exceed the limit ({config.max_headers} headers, "
                f"{config.max_header_bytes} bytes)",
                "headers_too_large",
            )
        name = name.lower()
        headers.append((name, value))
        if name == b"host":
            self._hosts += 1
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if self._hosts != 1 and (self._hosts or version != "1.0"):
            raise _Reject(400, "a request needs exactly one Host header", "bad_request")
        path, raw_path, query = split_target(self._url)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.shared.state.copy(),
        }
        cycle = RequestCycle(self, scope, parser.should_keep_alive())
        cycle.expect_continue = self._expect_continue
        # Trailer fields of a chunked body go to a list nobody reads: dropped, never one of
        # the request's headers (an Authorization sent as a trailer must not authenticate).
        self._headers = []
        self._in_head = False
        self._parsing = cycle
        self._body_since = self.last_rx
        self._body_bytes = self._since_body_data = 0
        if self._active is None:
            self._start(cycle)
        else:
            self._queue.append(cycle)
            self._pause_reading()

    def on_chunk_header(self) -> None:
        cycle = self._parsing
        if self._body_bytes == 0 and cycle is not None and unsupported_coding(cycle.scope):
            # httptools frames "gzip, chunked" as chunked and would hand the app gzip
            # bytes as the body. Checked here, where only chunked requests pay for it.
            raise _Reject(
                501, "the only transfer coding served is chunked", "unsupported_transfer_coding"
            )

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._since_body_data = 0
        cycle = self._parsing
        if cycle is None or cycle.response_complete:
            return  # the app answered without reading the body; it is discarded
        cycle.body += body
        if len(cycle.body) > _BODY_HIGH_WATER and not self._read_paused:
            self._cycle_body_paused = True
            self._pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self._parsing
        if cycle is None:
            return
        self._parsing = None
        cycle.body_complete = True
        cycle.wake()

    # -- used by cycles ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and self._linger_until is None:
            transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            return
        drain = self._drain
        if drain is None or drain.done():
            drain = self._drain = self.loop.create_future()
        await drain

    def body_consumed(self) -> None:
        if self._cycle_body_paused:
            self._cycle_body_paused = False
            if not self._queue:
                self._resume_reading()

    def response_done(self, cycle: RequestCycle) -> None:
        cycle.response_complete = True
        cycle.wake()
        if self.shared.config.access_log:
            cycle.log_access()
        if not cycle.keep_alive or not cycle.body_complete:
            # An unread request body would be parsed as the next request.
            self._no_more_requests()
            self.close_after_response()

    def cycle_finished(self, cycle: RequestCycle) -> None:
        if cycle.task is not None:
            self.shared.tasks.discard(cycle.task)
        if self._active is not cycle:
            return
        self._active = None
        transport = self.transport
        if transport is None:
            return
        # Reading may have been paused for this request's unconsumed body; whatever the
        # app did not read is moot now (and the connection must not stay deaf).
        self._cycle_body_paused = False
        if self.closing or not cycle.keep_alive or not cycle.response_complete:
            self.close_after_response()
            return
        if self._queue:
            self._start(self._queue.popleft())
            if not self._queue:
                self._resume_reading()
        else:
            if not self._in_head:
                self.idle_since = self.loop.time()
            self._resume_reading()
        self.shared.idle_changed()

    def close_after_response(self) -> None:
        """Close after what was written reached the client, without losing it.

        Closing a socket that still has unread request bytes makes the kernel send a
        reset, which can destroy the response before the client reads it (a 413 for a
        body still being uploaded, say). So: flush and send FIN, keep reading and
        discarding until the client closes too, for at most ``_LINGER_S``.
        """
        self.closing = True
        transport = self.transport
        if transport is None or transport.is_closing() or self._linger_until is not None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger_until = self.loop.time() + _LINGER_S
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def close(self) -> None:
        """Close an idle connection (nothing is owed to the client)."""
        self.closing = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abort(self) -> None:
        self.closing = True
        transport = self.transport
        if transport is not None:
            transport.abort()

    # -- server side --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop taking requests: close now if idle, else after the current response."""
        self.closing = True
        if self._active is None and self._parsing is None and self._linger_until is None:
            self.close()

    def check_timeouts(self, now: float) -> None:
        """Close an idle keep-alive connection, or cut off a client that stalls or
        trickles its request (called by the server's periodic sweep)."""
        if self.transport is None or (self._read_paused and self._linger_until is None):
            return  # silence while we do not read is ours, not the client's
        config = self.shared.config
        if self._linger_until is not None:
            if now >= self._linger_until:
                self.close()
        elif self.idle_since is not None:
            if now - self.idle_since >= config.keep_alive_s:
                self.close()
        elif self._in_head:
            if (
                now - self._head_started >= config.head_timeout_s
                or now - self.last_rx >= config.request_timeout_s
            ):
                self._reject(408, "request head not received in time", "timeout")
        elif (parsing := self._parsing) is not None:
            rate = config.min_body_rate_bytes_s
            if now - self.last_rx >= config.request_timeout_s:
                # A stalled body: the app waiting for it sees the client leave.
                parsing.disconnected = True
                parsing.wake()
                self.close_after_response()
            elif not parsing.expect_continue and body_too_slow(
                self._body_bytes, now - self._body_since, rate, config.body_rate_grace_s
            ):
                self._reject(408, f"request body slower than {rate:.0f} bytes/s", "timeout")

    def restart_body_clock(self) -> None:
        """Judge the body's rate from now on (the server was not reading it until now)."""
        self._body_since = self.loop.time()
        self._body_bytes = 0

    # -- internals ----------------------------------------------------------------------

    def _start(self, cycle: RequestCycle) -> None:
        self._active = cycle
        if self.shared.config.access_log:  # the only reader of the start time
            cycle.started_at = self.loop.time()
        task = self.loop.create_task(cycle.run(self.shared.app))
        cycle.task = task
        self.shared.tasks.add(task)

    def _reject(self, status: int, message: str, code: str) -> None:
        active = self._active
        if active is None:
            self.write(error_response(status, message, code))
        elif self._parsing is active:
            # The body the app is reading turned out malformed: it cannot be completed.
            if not active.response_started:
                active.response_started = True
                active.status = status
                self.write(error_response(status, message, code))
            active.disconnected = True
            active.wake()
        else:
            # Garbage after a valid request: finish answering that one, then close.
            self._no_more_requests()
            return
        self._no_more_requests()
        self.close_after_response()

    def _no_more_requests(self) -> None:
        self.closing = True
        if self._parsing is not None and self._parsing is not self._active:
            self._parsing.disconnected = True
            self._parsing.wake()
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closing:
            self._read_paused = False
            self.transport.resume_reading()
            if self._parsing is not None:
                self.restart_body_clock()
