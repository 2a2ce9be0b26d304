"""The async client's stream of text deltas (anyio: runs under asyncio and trio)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import anyio
import httpx

from sage.unified.sdk.client._core import describe_exception
from sage.unified.sdk.client._errors import StreamInterruptedError
from sage.unified.sdk.client._sse import ChatStreamBase

__all__ = ["AsyncChatStream"]

logger = logging.getLogger("sage.unified.sdk.client")


class AsyncChatStream(ChatStreamBase):
    """Text deltas of a streaming chat or completion, as an async iterator.

    After iteration ``text``, ``usage``, ``finish_reason`` and ``model`` hold the
    totals. Use ``async with`` (or call :meth:`aclose`) so that leaving early
    closes the HTTP response.

    Raises (while iterating):
        StreamInterruptedError: the connection broke or the server sent an error
            event; ``partial_text`` holds what arrived.
    """

    def __init__(self, response: httpx.Response) -> None:
        super().__init__()
        self._response = response
        self._lines: AsyncIterator[str] | None = None
        self._finished = False
        self._exhausted = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        if self._lines is None:
            self._lines = self._response.aiter_lines()
        try:
            while True:
                try:
                    line = await self._lines.__anext__()
                except StopAsyncIteration:
                    self._exhausted = True
                    self._on_end()
                    await self.aclose()
                    raise
                delta = self._on_line(line)
                if self._acc.done:
                    await self.aclose()
                    if delta:
                        return delta
                    raise StopAsyncIteration
                if delta:
                    return delta
        except httpx.TransportError as exc:
            self._exhausted = True
            await self.aclose()
            raise self._acc.interrupted(describe_exception(exc)) from exc
        except StreamInterruptedError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the HTTP response (idempotent)."""
        if self._finished and self._response.is_closed:
            return
        self._finished = True
        await self._response.aclose()
        await self._drain()

    async def _drain(self) -> None:
        # httpx reads a body through a chain of async generators. Left half-run,
        # they are finalised by the garbage collector, which trio reports as a
        # ResourceWarning; running the chain to its end (the response is closed,
        # so this is short) finishes all of them.
        lines, self._lines = self._lines, None
        if lines is None or self._exhausted:
            return
        self._exhausted = True
        with anyio.move_on_after(1.0):
            try:
                async for _ in lines:
                    pass
            except Exception as exc:  # any end of the closed stream will do
                logger.debug("closed stream ended with %s", describe_exception(exc))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
