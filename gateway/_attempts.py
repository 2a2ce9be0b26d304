"""One attempt of a proxied request: send it to one backend and classify what came back.

The data plane depends on :class:`Upstream`, a one-method protocol (the lean HTTP/1.1
client in ``gateway.upstream`` implements it), so its rules are tested with a fake
upstream the way httpx's ``MockTransport`` tests a client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sage.unified.gateway._asgi import Message, Receive, is_event_stream
from sage.unified.gateway._retry_rules import FailureKind
from sage.unified.gateway._stalls import EngineHung, StallTicket
from sage.unified.gateway._upstream_api import Origin, Upstream, UpstreamReply
from sage.unified.gateway.upstream import (
    PoolTimeout,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = [
    "WATCH_AFTER_S",
    "Attempt",
    "ClientWatch",
    "Origin",
    "Upstream",
    "UpstreamReply",
    "classify",
    "send_attempt",
]

RETRYABLE_STATUS = frozenset({502, 503})
WATCH_AFTER_S = 0.05
"""A request older than this gets a task that watches for its client leaving."""


def classify(error: UpstreamError) -> FailureKind:
    """How an upstream error failed the attempt (see :class:`FailureKind`)."""
    if isinstance(error, UpstreamConnectError | PoolTimeout):
        return FailureKind.UNREACHED
    if isinstance(error, UpstreamTimeout):
        return FailureKind.TIMED_OUT
    if isinstance(error, UpstreamDisconnected) and not error.response_started:
        return FailureKind.DROPPED
    return FailureKind.BROKEN


class Attempt:
    """The outcome of sending a request to one backend, before anything was relayed.

    Exactly one of: a response to relay (``failure is None``, ``response`` set), a
    failure (``failure`` set; ``response`` set when the engine answered 502/503), or the
    client left (``client_left``).
    """

    __slots__ = ("client_left", "error", "failure", "payload", "prefix", "response")

    def __init__(
        self,
        response: UpstreamReply | None = None,
        *,
        failure: FailureKind | None = None,
        error: UpstreamError | None = None,
        payload: bytes | None = None,
        prefix: list[bytes] | None = None,
        client_left: bool = False,
    ) -> None:
        self.response = response
        self.failure = failure
        self.error = error
        self.payload = payload
        """The whole body of a non-streamed response (read before anything is relayed)."""
        self.prefix = prefix
        """The first chunks of a non-streamed body too large to hold: relayed, then the
        rest streams through."""
        self.client_left = client_left

    def describe(self, backend: str) -> str:
        if self.error is not None:
            return f"{backend}: {type(self.error).__name__}: {self.error}"
        if self.response is not None:
            return f"{backend}: HTTP {self.response.status}"
        return backend


class ClientWatch:
    """Waits for the client to disconnect, then closes the upstream response in use.

    The server drops sends silently after a disconnect and never cancels the handler, so
    without this an engine would go on generating for a client that is gone: closing the
    upstream connection is how vLLM learns to abort the request. ``receive()`` returns
    only on disconnect (or once the response is complete) because the body has been read.

    The waiting task starts only once a request has run for ``WATCH_AFTER_S``: a task per
    request measurably costs CPU (13 µs of ~80 per proxied request on the benchmark
    machine), and a request that short cannot leave much upstream work behind. A client
    that left earlier is noticed at that moment.
    """

    __slots__ = ("_receive", "_task", "_timer", "gone", "response", "waiting")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.response: UpstreamReply | None = None
        self.waiting: asyncio.Task[Any] | None = None
        """The request's task while it waits for the engine's response head."""
        self._receive = receive
        self._task: asyncio.Future[Message] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._receive())
        self._task.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, task: asyncio.Future[Message]) -> None:
        if task.cancelled():
            return
        self.gone = True
        if self.response is not None:
            self.response.close()
        elif self.waiting is not None:
            # No response to close yet: cancelling the wait closes the connection.
            self.waiting.cancel()

    def attach(self, response: UpstreamReply) -> None:
        self.response = response
        if self.gone:
            response.close()

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _ours(task: asyncio.Task[Any] | None, flag: bool) -> bool:
    """Whether a cancellation came from us (``flag`` set where we cancelled) and is
    taken back: the task's only pending cancellation."""
    return flag and task is not None and task.uncancel() == 0


async def send_attempt(
    upstream: Upstream,
    origin: Origin,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    watch: ClientWatch,
    ticket: StallTicket | None = None,
    buffer_limit: int = 1 << 20,
) -> Attempt:
    """Send the request to one backend and read a non-streamed answer in full.

    Nothing reaches the client here, so any failure is still safe to retry elsewhere
    (generation has no side effects). A client that leaves meanwhile ends the attempt;
    an engine found hung (``ticket.stalled``) fails it as ``STALLED``.
    """
    # The ticket was made in this task: it knows the task already.
    task = watch.waiting = ticket.task if ticket is not None else asyncio.current_task()
    try:
        response = await upstream.request(b"POST", origin, path, headers, body)
    except asyncio.CancelledError:
        if _ours(task, watch.gone):
            return Attempt(client_left=True)  # cancelled by us: the client left
        if _ours(task, ticket is not None and ticket.stalled):
            return _stalled()
        raise
    except UpstreamError as exc:
        if watch.gone:
            return Attempt(error=exc, client_left=True)
        return Attempt(failure=classify(exc), error=exc)
    except ValueError as exc:  # an engine URL the client cannot use: that engine's fault
        error = UpstreamProtocolError(f"unusable engine address: {exc}")
        return Attempt(failure=FailureKind.BROKEN, error=error)
    finally:
        watch.waiting = None
    if ticket is not None:
        ticket.progress()
    watch.attach(response)
    if response.status in RETRYABLE_STATUS:
        return Attempt(response, failure=FailureKind.REFUSED)
    if is_event_stream(response.headers):
        return Attempt(response)
    # A non-streamed body is read in full before the client sees a byte, so an engine
    # dying mid-answer is still a retryable failure, not a broken response; one larger
    # than ``buffer_limit`` is relayed as it comes instead of held in memory.
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response:  # inlined: one coroutine less per request
            parts.append(chunk)
            size += len(chunk)
            if size > buffer_limit:
                return Attempt(response, prefix=parts)
    except UpstreamError as exc:
        response.close()
        if watch.gone:  # our own close: the client left, the engine did nothing wrong
            return Attempt(error=exc, client_left=True)
        return Attempt(failure=FailureKind.BROKEN, error=exc)
    except asyncio.CancelledError:
        response.close()
        if _ours(task, ticket is not None and ticket.stalled):
            return _stalled()
        raise
    return Attempt(response, payload=parts[0] if len(parts) == 1 else b"".join(parts))


def _stalled() -> Attempt:
    return Attempt(
        failure=FailureKind.STALLED, error=EngineHung("no answer, and /health timed out")
    )
