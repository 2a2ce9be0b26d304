"""The ASGI pieces the data plane uses directly (it runs ahead of Litestar)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sage.unified.gateway._errors import PayloadTooLargeError

__all__ = [
    "Message",
    "Receive",
    "Scope",
    "Send",
    "is_event_stream",
    "read_body",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` when the client left while sending it.

    Raises:
        PayloadTooLargeError: more than ``limit`` bytes.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    """A complete JSON response."""
    raw = [*_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend((k.encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response's ``content-type`` is ``text/event-stream`` (SSE)."""
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.startswith(b"text/event-stream")
    return False
