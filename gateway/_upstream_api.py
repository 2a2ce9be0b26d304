"""The data plane's seam in front of the engines: a one-method upstream protocol.

``gateway.upstream.UpstreamPool`` implements it; tests use a fake (as httpx's
``MockTransport`` tests a client).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol
from urllib.parse import urlsplit

__all__ = ["Origin", "Upstream", "UpstreamReply", "parse_origin"]

Origin = tuple[str, str, int]
"""``(scheme, host, port)``."""


class UpstreamReply(Protocol):
    """A response whose head has arrived; the body is read or iterated, then closed."""

    status: int
    headers: list[tuple[bytes, bytes]]

    async def read(self) -> bytes: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    """Sends one request to an engine (``gateway.upstream.UpstreamPool`` is one)."""

    async def request(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> UpstreamReply: ...


def parse_origin(url: str) -> Origin:
    """``http://host:port/...`` → ``("http", host, port)`` (the upstream's origin)."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, host, port)
