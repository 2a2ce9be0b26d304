"""HTTP/1.1 bytes the server reads and writes itself (pure)."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from sage.unified.sdk.models import encode, error_body

from ._types import Scope

__all__ = [
    "CHUNKED_END",
    "CONTINUE",
    "DATE",
    "NO_BODY_STATUS",
    "DateHeader",
    "address",
    "error_response",
    "split_target",
    "status_line",
    "unsupported_coding",
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


def error_response(
    status: int,
    message: str,
    code: str,
    *,
    close: bool = True,
    error_type: str = "invalid_request_error",
    retry_after_s: int | None = None,
) -> bytes:
    """A complete OpenAI-shaped JSON error response."""
    body = encode(error_body(message, error_type, code))
    head = [
        status_line(status),
        DATE.get(),
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    if retry_after_s is not None:
        head.append(b"retry-after: %d\r\n" % retry_after_s)
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


def split_target(target: bytes) -> tuple[str, bytes, bytes]:
    """A request target as ASGI wants it: ``(path, raw_path, query_string)``, the path
    percent-decoded (origin-form ``/a?b``, ``*``, or absolute-form ``http://h/a?b``)."""
    if target[:1] == b"/":
        raw_path, _, query = target.partition(b"?")
    elif target == b"*":
        raw_path, query = target, b""
    else:  # absolute-form target (a client talking to a proxy)
        parsed = httptools.parse_url(target)
        raw_path, query = parsed.path or b"/", parsed.query or b""
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    return path, raw_path, query


def unsupported_coding(scope: Scope) -> bool:
    """Whether a chunked request's ``Transfer-Encoding`` is more than ``chunked`` alone
    (``gzip, chunked``, or several such headers): only plain chunked is served."""
    codings = [value for name, value in scope["headers"] if name == b"transfer-encoding"]
    return len(codings) != 1 or codings[0].strip().lower() != b"chunked"


def address(info: Any) -> tuple[str, int] | None:
    """A socket address as ASGI's ``client``/``server`` (host, port), if it is one."""
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
