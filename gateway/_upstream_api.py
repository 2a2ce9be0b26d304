"""The data plane's seam in front of the engines: a one-method upstream protocol.

``gateway.upstream.UpstreamPool`` implements it; tests use a fake (as httpx's
``MockTransport`` tests a client).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

__all__ = ["Origin", "Upstream", "UpstreamReply"]

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
