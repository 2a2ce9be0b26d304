"""One request on a connection and its response: the ASGI ``receive`` and ``send``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sage.unified.sdk.logsafe import safe_log_value

from ._types import ASGIApp, Message
from ._wire import CHUNKED_END, CONTINUE, DATE, NO_BODY_STATUS, error_response, status_line

if TYPE_CHECKING:
    from ._protocol import HttpConnection

__all__ = ["RequestCycle"]

log = logging.getLogger("sage.unified.gateway")
access_log = logging.getLogger("sage.unified.gateway.access")

DISCONNECT: Message = {"type": "http.disconnect"}


class RequestCycle:
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

    def log_access(self) -> None:
        """One access-log line: client, method, target, status, duration (escaped)."""
        scope = self.scope
        client = scope["client"]
        access_log.info(
            '%s - "%s %s HTTP/%s" %d %.1fms',
            client[0] if client else "-",
            safe_log_value(scope["method"]),
            safe_log_value(scope["path"]),
            scope["http_version"],
            self.status,
            (self.conn.loop.time() - self.started_at) * 1000,
        )

    # -- ASGI ---------------------------------------------------------------------

    async def receive(self) -> Message:
        conn = self.conn
        if self.expect_continue:
            self.expect_continue = False
            if not self.response_started and not self.disconnected:
                conn.write(CONTINUE)
                conn.restart_body_clock()  # the client sends the body from now on
        while True:
            if self.disconnected or self.response_complete:
                return DISCONNECT
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
        if self.is_head or self.status in NO_BODY_STATUS:
            data = b""
        elif self.chunked:
            if body:
                data = b"%x\r\n%b\r\n" % (len(body), body)
                if not more:
                    data += CHUNKED_END
            else:
                data = b"" if more else CHUNKED_END
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
            if self.remaining > 0 and not self.is_head and self.status not in NO_BODY_STATUS:
                # A short body cannot be repaired: the client would wait for the rest.
                self.keep_alive = False
                conn.response_done(self)
                raise RuntimeError("response body shorter than its Content-Length")
            conn.response_done(self)

    def _start(self, message: Message) -> None:
        conn = self.conn
        status = message["status"]
        parts = [status_line(status), DATE.get()]
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
        elif not self.is_head and status not in NO_BODY_STATUS and status >= 200:
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
        if length_given and not self.is_head and status not in NO_BODY_STATUS:
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
                safe_log_value(self.scope["method"]),
                safe_log_value(self.scope["path"]),
            )
            self._fail()
        else:
            if not self.response_complete and not self.disconnected:
                log.error(
                    "the application returned without completing the response for %s %s",
                    safe_log_value(self.scope["method"]),
                    safe_log_value(self.scope["path"]),
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
