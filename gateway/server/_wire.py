"""HTTP/1.1 response bytes the server writes itself (pure)."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from sage.unified.sdk.models import encode, error_body

__all__ = [
    "CHUNKED_END",
    "CONTINUE",
    "DATE",
    "NO_BODY_STATUS",
    "DateHeader",
    "error_response",
    "status_line",
]

STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}
NO_BODY_STATUS = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED_END = b"0\r\n\r\n"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 599:
            raise RuntimeError(f"invalid HTTP status {status!r}")
        line = f"HTTP/1.1 {status} \r\n".encode()
    return line


class DateHeader:
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


DATE = DateHeader()


def error_response(status: int, message: str, code: str, *, close: bool = True) -> bytes:
    """A complete OpenAI-shaped JSON error response."""
    body = encode(error_body(message, "invalid_request_error", code))
    head = [
        status_line(status),
        DATE.get(),
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body
