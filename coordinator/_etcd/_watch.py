"""A watch that survives member failures: :class:`Watch`.

One watch is one streaming POST to ``/v3/watch``; the answer is one JSON object a line.
When the stream breaks (member killed, network cut, member lost its leader, or nothing
arrived for ``idle_timeout_s`` seconds) the watch is opened again, on the next endpoint if
this one fails, from :attr:`Watch.next_revision`, so no change is lost and none is seen
twice. A watch that sees nothing for ``idle_timeout_s`` is re-opened on purpose: a member
behind a partition keeps the TCP connection open and silent, and re-opening is how we
notice (one cheap request per idle period).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import httpx

from sage.unified.coordinator._etcd._codec import (
    WatchMessage,
    decode_watch_message,
    encode_watch_create,
    is_token_rejected,
)
from sage.unified.coordinator._etcd._errors import (
    EtcdCompactedError,
    EtcdError,
    EtcdRequestError,
    EtcdUnavailableError,
)
from sage.unified.coordinator._etcd._types import Bytes, WatchEvent

if TYPE_CHECKING:
    from sage.unified.coordinator._etcd._transport import EtcdTransport

__all__ = ["Watch"]

logger = logging.getLogger(__name__)

_MAX_BACKOFF = 1.0
_CLOSE_TIMEOUT = 2.0


class Watch:
    """Changes under a key or prefix, in revision order, across reconnects.

    Use ``async with client.watch(...) as watch: async for event in watch: ...``.
    The stream is opened by the first iteration. With ``start_revision=0`` the watch
    starts when etcd creates it, so changes made before the first iteration are not
    seen; to see every change after a read, pass the read's ``header.revision + 1``.
    Iteration ends only when the watch is closed (:meth:`aclose`, or leaving the
    ``async with``). Cancelling the task that iterates closes nothing by itself: leave
    the ``async with`` to release the stream.

    Raises (from iteration):
        EtcdCompactedError: The changes from :attr:`next_revision` on were compacted away;
            read the current state again and start a new watch from its revision + 1.
        EtcdUnavailableError: No endpoint could be reached for ``unavailable_timeout_s``
            seconds (never, when it is None).
        EtcdAuthError, EtcdRequestError: etcd refused the watch.
    """

    def __init__(
        self,
        transport: EtcdTransport,
        key: Bytes,
        *,
        prefix: bool = False,
        range_end: Bytes | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        idle_timeout_s: float = 10.0,
        unavailable_timeout_s: float | None = None,
    ) -> None:
        self._transport = transport
        self._key = key
        self._prefix = prefix
        self._range_end = range_end
        self._prev_kv = prev_kv
        self._idle_timeout_s = idle_timeout_s
        self._unavailable_timeout_s = unavailable_timeout_s
        self.next_revision = start_revision
        """The first revision not yet delivered (0: "from now", before etcd answered)."""
        self.reconnects = 0
        """How many times the stream was opened again after the first time."""
        self._pending: deque[WatchEvent] = deque()
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._endpoint_index = 0
        self._closed = False
        self._opened_once = False

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            if self._response is None:
                await self._connect()
            message = await self._read_message()
            if message is not None:
                await self._apply(message)
        return self._pending.popleft()

    @property
    def buffered(self) -> int:
        """Events already received and not yet delivered: 0 means the next iteration
        waits for etcd (the events of one message have all been delivered)."""
        return len(self._pending)

    async def aclose(self) -> None:
        """Stop watching and release the stream (safe to call twice, and when cancelled)."""
        self._closed = True
        await self._disconnect()

    async def _connect(self) -> None:
        failures = 0
        started = anyio.current_time()
        while True:
            for index, endpoint in self._transport.endpoint_order():
                body = encode_watch_create(
                    self._key,
                    range_end=self._range_end,
                    prefix=self._prefix,
                    start_revision=self.next_revision,
                    prev_kv=self._prev_kv,
                )
                try:
                    with anyio.fail_after(self._idle_timeout_s):
                        response = await self._transport.open_stream(endpoint, "/v3/watch", body)
                except (EtcdUnavailableError, TimeoutError):
                    self._transport.demote(index)
                    continue
                except EtcdError as exc:
                    if not is_token_rejected(exc):
                        raise
                    self._transport.forget_token()
                    continue
                self._response = response
                self._lines = response.aiter_lines()
                self._endpoint_index = index
                self.reconnects += self._opened_once
                self._opened_once = True
                return
            failures += 1
            waited = anyio.current_time() - started
            if self._unavailable_timeout_s is not None and waited >= self._unavailable_timeout_s:
                raise EtcdUnavailableError(
                    f"no etcd endpoint of {self._transport.target} answered a watch for {waited:.1f} s"
                )
            await anyio.sleep(min(0.05 * 2**failures, _MAX_BACKOFF))

    async def _read_message(self) -> WatchMessage | None:
        """The next message, or None when the stream ended, broke or stayed idle."""
        assert self._lines is not None
        line = ""
        with anyio.move_on_after(self._idle_timeout_s):
            try:
                while not line.strip():
                    line = await self._lines.__anext__()
            except (StopAsyncIteration, httpx.TransportError):
                line = ""
        if not line.strip():
            await self._disconnect()
            return None
        endpoint = self._transport.target.endpoints[self._endpoint_index].netloc
        try:
            return decode_watch_message(json.loads(line), endpoint=endpoint)
        except EtcdUnavailableError:  # e.g. the member lost its leader
            self._transport.demote(self._endpoint_index)
            await self._disconnect()
            return None
        except ValueError:
            await self._disconnect()
            return None

    async def _apply(self, message: WatchMessage) -> None:
        if message.canceled:
            await self._disconnect()
            if message.compact_revision:
                raise EtcdCompactedError(
                    f"etcd compacted revisions before {message.compact_revision}; the watch "
                    f"needed {self.next_revision}",
                    compact_revision=message.compact_revision,
                )
            if "no leader" in message.cancel_reason:
                self._transport.demote(self._endpoint_index)
                return
            raise EtcdRequestError(f"etcd cancelled the watch: {message.cancel_reason}")
        if message.created:
            if self.next_revision == 0:
                self.next_revision = message.header_revision + 1
            return
        if message.events:
            self._pending.extend(message.events)
            self.next_revision = message.events[-1].kv.mod_revision + 1
        elif message.is_progress:
            self.next_revision = max(self.next_revision, message.header_revision + 1)

    async def _disconnect(self) -> None:
        response, lines = self._response, self._lines
        self._response = self._lines = None
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            if response is not None:
                await response.aclose()
            if lines is not None:
                # httpx reads a body through a chain of async generators; left half-run,
                # the garbage collector finalises them and trio reports a ResourceWarning.
                # Running the chain to its end (short: the response is closed) ends them all.
                try:
                    async for _ in lines:
                        pass
                except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
                    logger.debug("closed watch stream ended with %r", exc)
