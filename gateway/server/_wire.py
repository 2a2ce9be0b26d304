"""HTTP/1.1 response bytes the server writes itself (pure)."""

from __future__ import annotations

import time
from email.utils import formatdate

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
