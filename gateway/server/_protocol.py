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
- limits: header count/bytes (431), target length (414), malformed HTTP (400), each an
  OpenAI-shaped JSON error, then the connection is closed;
- back-pressure: ``send()`` waits while the client's socket buffer is full, and reading
  pauses while a request body is buffered beyond 64 KiB and not consumed;
- the client leaving makes ``receive()`` return ``http.disconnect``; later ``send()``
  calls are dropped (the app is not cancelled, as under uvicorn).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools

from sage.unified.sdk.models import encode, error_body

from ._types import ASGIApp, Message

if TYPE_CHECKING:
    from ._server import ServerState

__all__ = ["HttpConnection"]

log = logging.getLogger("sage.unified.gateway")
access_log = logging.getLogger("sage.unified.gateway.access")

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_BODY_HIGH_WATER = 64 * 1024
_LINGER_S = 2.0
"""How long a closing connection keeps reading (and discarding) after its last response."""
_STATUS_LINES = {
    status: f"HTTP/1.1 {status} {phrase}\r\n".encode()
    for status, phrase in (
        (100, "Continue"),
        (101, "Switching Protocols"),
        (200, "OK"),
        (201, "Created"),
        (202, "Accepted"),
        (204, "No Content"),
        (206, "Partial Content"),
        (301, "Moved Permanently"),
        (302, "Found"),
        (303, "See Other"),
        (304, "Not Modified"),
        (307, "Temporary Redirect"),
        (308, "Permanent Redirect"),
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (405, "Method Not Allowed"),
        (406, "Not Acceptable"),
        (408, "Request Timeout"),
        (409, "Conflict"),
        (410, "Gone"),
        (411, "Length Required"),
        (413, "Content Too Large"),
        (414, "URI Too Long"),
        (415, "Unsupported Media Type"),
        (422, "Unprocessable Content"),
        (429, "Too Many Requests"),
        (431, "Request Header Fields Too Large"),
        (499, "Client Closed Request"),
        (500, "Internal Server Error"),
        (501, "Not Implemented"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
    )
}
_NO_BODY_STATUS = frozenset({204, 304})
_DISCONNECT: Message = {"type": "http.disconnect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNKED_END = b"0\r\n\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 599:
            raise RuntimeError(f"invalid HTTP status {status!r}")
        line = f"HTTP/1.1 {status} \r\n".encode()
    return line


class _DateHeader:
    """``date: ...\\r\\n``, formatted at most once per second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


DATE = _DateHeader()


class _Reject(Exception):
    """A request the parser callbacks refuse (answered with an error, then closed)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error_response(status: int, message: str, code: str, *, close: bool = True) -> bytes:
    """A complete OpenAI-shaped JSON error response."""
    body = encode(error_body(message, "invalid_request_error", code))
    head = [
        _status_line(status),
        DATE.get(),
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


class _Cycle:
    """One request and its response on a connection."""

    __slots__ = (
        "body",
        "body_complete",
        "chunked",
        "conn",
        "disconnected",
        "expect_continue",
        "head_pending",
        "is_head",
        "keep_alive",
        "remaining",
        "request_delivered",
        "response_complete",
        "response_started",
        "scope",
        "started_at",
        "status",
        "task",
        "waiter",
    )

    def __init__(self, conn: HttpConnection, scope: dict[str, Any], keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.body_complete = False
        self.request_delivered = False
        self.expect_continue = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.head_pending: bytes | None = None
        self.chunked = False
        self.remaining = -1  # bytes of a fixed-length body still to send
        self.is_head = scope["method"] == "HEAD"
        self.status = 0
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.started_at = 0.0

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI ---------------------------------------------------------------------

    async def receive(self) -> Message:
        conn = self.conn
        if self.expect_continue:
            self.expect_continue = False
            if not self.response_started and not self.disconnected:
                conn.write(_CONTINUE)
        while True:
            if self.disconnected or self.response_complete:
                return _DISCONNECT
            if not self.request_delivered and (self.body or self.body_complete):
                body = bytes(self.body)
                self.body.clear()
                more = not self.body_complete
                if not more:
                    self.request_delivered = True
                conn.body_consumed()
                return {"type": "http.request", "body": body, "more_body": more}
            waiter = self.waiter = conn.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            self._start(message)
            return
        if self.response_complete:
            raise RuntimeError(f"{kind!r} sent after the response was complete")
        if kind != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', got {kind!r}")
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        head = self.head_pending
        if self.is_head or self.status in _NO_BODY_STATUS:
            data = b""
        elif self.chunked:
            if body:
                data = b"%x\r\n%b\r\n" % (len(body), body)
                if not more:
                    data += _CHUNKED_END
            else:
                data = b"" if more else _CHUNKED_END
        else:
            data = body
            if self.remaining >= 0:
                self.remaining -= len(body)
                if self.remaining < 0:
                    raise RuntimeError("response body longer than its Content-Length")
        if head is not None:
            self.head_pending = None
            data = head + data
        if data:
            conn.write(data)
        if not more:
            if self.remaining > 0 and not self.is_head and self.status not in _NO_BODY_STATUS:
                # A short body cannot be repaired: the client would wait for the rest.
                self.keep_alive = False
                conn.response_done(self)
                raise RuntimeError("response body shorter than its Content-Length")
            conn.response_done(self)

    def _start(self, message: Message) -> None:
        conn = self.conn
        status = message["status"]
        parts = [_status_line(status), DATE.get()]
        lines = 2
        length_given = False
        for name, value in message.get("headers", ()):
            lname = name.lower()
            if lname == b"content-length":
                length_given = True
                self.remaining = int(value)
                if self.remaining < 0:
                    raise RuntimeError(f"invalid Content-Length {value!r}")
                continue
            if lname == b"transfer-encoding" or lname == b"date":
                continue  # framing is ours; one date header, ours
            if lname == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue
            parts += (lname, b": ", value, b"\r\n")
            lines += 1
        if length_given:
            parts += (b"content-length: ", str(self.remaining).encode(), b"\r\n")
            lines += 1
        elif not self.is_head and status not in _NO_BODY_STATUS and status >= 200:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
                lines += 1
            else:
                self.keep_alive = False  # HTTP/1.0 has no chunking: the body ends at close
        if not self.keep_alive or conn.closing or not self.body_complete:
            # (An unread request body means the connection closes after this response.)
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
            lines += 1
        elif self.scope["http_version"] == "1.0":
            parts.append(b"connection: keep-alive\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Every line we emit ends in exactly one CRLF: any other CR or LF came from a
        # header name or value and would split the response.
        if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1:
            raise RuntimeError("CR or LF in a response header")
        self.status = status
        self.response_started = True
        self.expect_continue = False
        if length_given and not self.is_head and status not in _NO_BODY_STATUS:
            # Written with the body (one segment instead of two): the body of a
            # fixed-length response follows at once.
            self.head_pending = head
        else:
            conn.write(head)

    async def run(self, app: ASGIApp) -> None:
        conn = self.conn
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            conn.abort()
            raise
        except Exception:
            log.exception(
                "unhandled error in the application for %s %s",
                self.scope["method"],
                self.scope["path"],
            )
            self._fail()
        else:
            if not self.response_complete and not self.disconnected:
                log.error(
                    "the application returned without completing the response for %s %s",
                    self.scope["method"],
                    self.scope["path"],
                )
                self._fail()
        finally:
            conn.cycle_finished(self)

    def _fail(self) -> None:
        """Answer 500 if no byte of the response was written, then close either way
        (a partly written response cannot be completed)."""
        conn = self.conn
        if self.response_complete:
            return  # the client has its answer; the error was the app's own business
        nothing_written = not self.response_started or self.head_pending is not None
        if nothing_written and not self.disconnected:
            self.head_pending = None
            self.response_started = True
            self.status = 500
            conn.write(error_response(500, "internal server error", "internal_error"))
        self.keep_alive = False
        conn.close_after_response()


class HttpConnection(asyncio.Protocol):
    """An ``asyncio.Protocol`` serving one client connection."""

    __slots__ = (
        "_active",
        "_cycle_body_paused",
        "_drain",
        "_expect_continue",
        "_head_bytes",
        "_head_limit",
        "_header_bytes",
        "_headers",
        "_in_head",
        "_linger_until",
        "_parser",
        "_parsing",
        "_queue",
        "_read_paused",
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
        config = shared.config
        # Request line + headers + their separators; a generous bound, checked per read.
        self._head_limit = config.max_url_bytes + 2 * config.max_header_bytes + 4096
        self._parsing: _Cycle | None = None  # the request whose bytes are being parsed
        self._active: _Cycle | None = None  # the request being answered
        self._queue: collections.deque[_Cycle] = collections.deque()
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
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        self.idle_since = self.last_rx = self.loop.time()
        self.shared.connections.add(self)
        if self.shared.closing:
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
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        elif url == b"*":
            raw_path, query = url, b""
        else:  # absolute-form target (a client talking to a proxy)
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": parser.get_http_version(),
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
        cycle = _Cycle(self, scope, parser.should_keep_alive())
        cycle.expect_continue = self._expect_continue
        self._in_head = False
        self._parsing = cycle
        if self._active is None:
            self._start(cycle)
        else:
            self._queue.append(cycle)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
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

    def response_done(self, cycle: _Cycle) -> None:
        cycle.response_complete = True
        cycle.wake()
        shared = self.shared
        if shared.config.access_log:
            access_log.info(
                '%s - "%s %s HTTP/%s" %d %.1fms',
                self.client[0] if self.client else "-",
                cycle.scope["method"],
                cycle.scope["path"],
                cycle.scope["http_version"],
                cycle.status,
                (self.loop.time() - cycle.started_at) * 1000,
            )
        if not cycle.keep_alive or not cycle.body_complete:
            # An unread request body would be parsed as the next request.
            self._no_more_requests()
            self.close_after_response()

    def cycle_finished(self, cycle: _Cycle) -> None:
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
        """Close an idle keep-alive connection, or cut off a client that stalls its
        request (called by the server's periodic sweep)."""
        if self.transport is None or (self._read_paused and self._linger_until is None):
            return  # silence while we do not read is ours, not the client's
        config = self.shared.config
        if self._linger_until is not None:
            if now >= self._linger_until:
                self.close()
            return
        if self.idle_since is not None:
            if now - self.idle_since >= config.keep_alive_s:
                self.close()
        elif now - self.last_rx >= config.request_timeout_s:
            if self._in_head and self._active is None:
                self.write(error_response(408, "request head not received in time", "timeout"))
                self.close_after_response()
            elif self._parsing is not None:
                # A stalled body: the app waiting for it sees the client leave.
                self._parsing.disconnected = True
                self._parsing.wake()
                self.close_after_response()

    # -- internals ----------------------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        self._active = cycle
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


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
