"""The sync client's stream of text deltas (httpx.Client)."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Self

import httpx

from sage.unified.sdk.client._core import describe_exception
from sage.unified.sdk.client._errors import StreamInterruptedError
from sage.unified.sdk.client._sse import ChatStreamBase

__all__ = ["ChatStream"]


class ChatStream(ChatStreamBase):
    """Text deltas of a streaming chat or completion, as an iterator.

    After iteration ``text``, ``usage``, ``finish_reason`` and ``model`` hold the
    totals. Use ``with`` (or call :meth:`close`) so that leaving early
    closes the HTTP response.

    Raises (while iterating):
        StreamInterruptedError: the connection broke or the server sent an error
            event; ``partial_text`` holds what arrived.
    """

    def __init__(self, response: httpx.Response) -> None:
        super().__init__()
        self._response = response
        self._lines: Iterator[str] | None = None
        self._finished = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        if self._lines is None:
            self._lines = self._response.iter_lines()
        try:
            while True:
                try:
                    line = next(self._lines)
                except StopIteration:
                    self._on_end()
                    self.close()
                    raise
                delta = self._on_line(line)
                if self._acc.done:
                    self.close()
                    if delta:
                        return delta
                    raise StopIteration
                if delta:
                    return delta
        except httpx.TransportError as exc:
            self.close()
            raise self._acc.interrupted(describe_exception(exc)) from exc
        except StreamInterruptedError:
            self.close()
            raise

    def close(self) -> None:
        """Close the HTTP response (idempotent)."""
        self._finished = True
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
