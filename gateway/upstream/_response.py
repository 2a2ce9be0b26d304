"""The response handle returned by ``UpstreamPool.request``."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from ._errors import UpstreamDisconnected

if TYPE_CHECKING:
    from ._connection import UpstreamConnection
    from ._pool import _OriginPool

__all__ = ["UpstreamResponse"]


class UpstreamResponse:
    """Status and headers of an upstream response; the body is read on demand.

    Iterate (``async for chunk in response``) to get body chunks as they
    arrive, already decoded from chunked / Content-Length / read-until-close
    framing. Each upstream read batch is one chunk: SSE events are neither
    re-split nor coalesced. ``read()`` returns the whole body.

    The connection goes back to the pool as soon as the body has been read to
    the end. ``aclose()`` (or leaving ``async with``) before that closes the
    socket, which is how the gateway aborts an upstream request whose client
    went away. Always close a response: an unclosed, unfinished response
    keeps its connection slot busy.

    Cancellation: cancelling a task blocked in ``read()`` or in the iteration
    closes the connection (it is never returned to the pool mid-body).

    Attributes:
        status: the final status code (1xx interim responses are skipped).
        headers: raw headers in order, names lower-cased.
    """

    __slots__ = ("_closed_early", "_conn", "_owner", "headers", "status")

    def __init__(self, conn: UpstreamConnection, owner: _OriginPool) -> None:
        self.status: int = conn.status
        self.headers: list[tuple[bytes, bytes]] = conn.headers
        self._conn: UpstreamConnection | None = conn
        self._owner = owner
        self._closed_early = False

    @property
    def buffered_bytes(self) -> int:
        """Body bytes received from the upstream and not consumed yet.

        Bounded by back-pressure to about ``write_buffer_high`` plus one read
        batch: past that the client stops reading from the socket.
        """
        conn = self._conn
        return 0 if conn is None else conn.buffered

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            if self._closed_early:
                # Closed while unfinished (e.g. the gateway's client went away): to a
                # reader this is a disconnect, not a programming error.
                raise UpstreamDisconnected("response closed locally", response_started=True)
            raise StopAsyncIteration
        chunk = conn.pop_chunk()  # fast path: no coroutine, no future
        if chunk is not None:
            return chunk
        try:
            chunk = await conn.next_chunk()
        except BaseException:
            # close() may have run while we waited (it already gave the slot back):
            # discard only a connection this response still owns, or the pool's
            # count of open connections would go down twice.
            if self._conn is conn:
                self._conn = None
                self._closed_early = True
                self._owner.discard(conn)
            raise
        if chunk is None:
            self._conn = None
            self._owner.release(conn)
            raise StopAsyncIteration
        return chunk

    async def read(self) -> bytes:
        """Read the rest of the body.

        Raises:
            ReadTimeout, UpstreamDisconnected, UpstreamProtocolError: the body
                could not be read completely (the connection is closed).
        """
        parts = [chunk async for chunk in self]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """Release the connection: back to the pool if the body was read to the
        end and the server allows keep-alive, otherwise close the socket.
        Idempotent; never raises."""
        self.close()

    def close(self) -> None:
        """Synchronous ``aclose()`` (usable from callbacks and ``finally`` blocks)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._closed_early = not conn.complete
        self._owner.release(conn)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status}>"
