"""HTTP/1.1 response framing with precomputed byte templates (pure)."""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "CHUNKED_END",
    "CONTENT_JSON",
    "CONTENT_METRICS",
    "CONTENT_TEXT",
    "chunk",
    "response",
    "stream_head",
]

CONTENT_JSON = b"application/json"
CONTENT_TEXT = b"text/plain; charset=utf-8"
CONTENT_METRICS = b"text/plain; version=0.0.4; charset=utf-8"
CHUNKED_END = b"0\r\n\r\n"

_STATUS: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus
}


def _status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def response(
    status: int,
    body: bytes,
    *,
    content_type: bytes = CONTENT_JSON,
    request_id: bytes | None = None,
    keep_alive: bool = True,
) -> bytes:
    """A complete response with ``content-length`` framing."""
    parts = [
        _status_line(status),
        b"content-type: ",
        content_type,
        b"\r\ncontent-length: %d\r\n" % len(body),
    ]
    if request_id is not None:
        parts.append(b"x-request-id: " + request_id + b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


def stream_head(*, request_id: bytes, keep_alive: bool = True) -> bytes:
    """Status line and headers of an SSE response with chunked framing."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\nx-request-id: "
        + request_id
        + (b"\r\n\r\n" if keep_alive else b"\r\nconnection: close\r\n\r\n")
    )


def chunk(data: bytes) -> bytes:
    """One chunk of a ``transfer-encoding: chunked`` body."""
    return b"%x\r\n%b\r\n" % (len(data), data)
